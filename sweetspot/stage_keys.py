"""What each stage's cache key is made of, computed from the composed config without running
anything (no model is loaded, nothing is sampled).

A key must change with every field that changes a stage's output, and with nothing else: a field
that changes only how the work is done (batch sizes, ``block_rows``, chunk sizes, devices,
logging cadence) must not force a recompute, or a sweep that only re-tunes memory recomputes
everything. Each config class names its execution-only fields in an ``EXECUTION_ONLY`` class
attribute (samplers in ``execution_only()``); ``key_node`` drops them, recursively, so nested
scorer nodes (the ensemble's, ``evaluation.scorer``) are handled the same way.

The pipeline builds every stage's config here, so ``stage_keys(cfg)`` is exactly the keys a run
of ``cfg`` uses (``tests/test_cache_keys.py`` checks both properties).
"""

from __future__ import annotations

from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from sweetspot.cache import stage_key
from sweetspot.config import Plan, validate
from sweetspot.models import ModelSpec
from sweetspot.tasks.base import Task

STAGES = (
    "prompts", "sample", "score", "denoise", "implicit", "pilot", "model_scores", "select",
    "train",
    "answers_reference", "answers_trained",
)


def execution_only(target: str) -> tuple[str, ...]:
    """The execution-only fields of what a ``_target_`` names: a stage class's
    ``EXECUTION_ONLY``; none for anything else it may name (a torch optimizer, a schedule
    function such as ``transformers.get_cosine_schedule_with_warmup``, a Lightning callback):
    those are not sweetspot classes and have no common base to declare it, so every argument
    of theirs is part of the key."""
    return tuple(getattr(get_object(target), "EXECUTION_ONLY", ()))


def key_node(value: Any) -> Any:
    """A plain copy of a config node without the execution-only fields of any ``_target_``
    class in it (at any depth)."""
    if isinstance(value, DictConfig) or OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        skip = execution_only(value["_target_"]) if "_target_" in value else ()
        return {k: key_node(v) for k, v in value.items() if k not in skip}
    if isinstance(value, (list, tuple)):
        return [key_node(v) for v in value]
    return value


def node(cfg: DictConfig, key: str) -> Any:
    return key_node(cfg[key])


def prompt_source(plan: Plan) -> Task:
    """The run's prompt source: the sampler's own prompts when it brings them
    (``Sampler.prompt_source``, e.g. offline data), else the task."""
    return plan.sampler.prompt_source() or plan.task


def prompts_config(cfg: DictConfig, plan: Plan) -> dict:
    """The task's node and fingerprint; a sampler's own prompts are identified by their
    fingerprint alone (offline data: the sampler's config, which holds the file's hash)."""
    own = plan.sampler.prompt_source()
    if own is not None:
        return own.fingerprint()
    return {"task": node(cfg, "task"), **plan.task.fingerprint()}


def sample_config(cfg: DictConfig, plan: Plan) -> dict:
    model = plan.model.identity() if plan.sampler.needs_model else None
    return {"sampler": plan.sampler.cache_config(), "model": model}


def score_config(cfg: DictConfig, plan: Plan) -> dict:
    return {"scorer": node(cfg, "scorer")}


def denoise_config(cfg: DictConfig, plan: Plan) -> dict:
    return {"denoiser": node(cfg, "denoiser"), "use_n": plan.sampler.use_n}


def implicit_config(cfg: DictConfig, plan: Plan) -> dict:
    """The implicit sub-stage trains on a random subset of the strategy's candidate pairs, so its
    key holds the candidates (``implicit_config()`` of the strategy), not only ``implicit_*``."""
    return {
        "implicit": plan.selection.implicit_settings().key,
        "trainer": node(cfg, "trainer"),
        "model": plan.model.identity(),
        "seed": cfg.seed,
    }


def pilot_config(cfg: DictConfig, plan: Plan) -> dict:
    """The pilot (``selection=pilot``) trains short runs of its candidates from the model with
    the run's trainer and loss, and scores them with the evaluation's settings and scorer."""
    return {
        "pilot": plan.selection.pilot_settings().key,
        "trainer": node(cfg, "trainer"),
        "loss": node(cfg, "loss"),
        "model": plan.model.identity(),
        "evaluation": node(cfg, "evaluation"),
        "scorer": eval_scorer_node(cfg),
    }


def model_scores_config(cfg: DictConfig, plan: Plan) -> dict:
    """The model-scoring sub-stage (``needs_model``, e.g. ``selection=influence``): the
    strategy's ``model_config()``, the model, the LoRA setup and token limits its gradients go
    through, and the run's seed (validation split, adapter init). Not ``train_seed`` nor the
    optimiser: a sweep over training seeds or bands shares one entry."""
    trainer = node(cfg, "trainer")
    return {
        "scoring": plan.selection.model_config(),
        "model": plan.model.identity(),
        "trainer": {k: trainer[k] for k in ("lora", "max_length", "max_prompt_length")},
        "seed": cfg.seed,
    }


def select_config(cfg: DictConfig, plan: Plan) -> dict:
    return {"selection": node(cfg, "selection")}


def train_config(cfg: DictConfig, plan: Plan, reference: ModelSpec | None = None) -> dict:
    """``reference``: training's reference model when it is not the model trained from
    (iterative rounds with ``round_reference=initial``); absent from the key otherwise."""
    config = {
        "loss": node(cfg, "loss"),
        "trainer": node(cfg, "trainer"),
        "model": plan.model.identity(),
        "keep_order": plan.selection.keep_order,
    }
    if reference is not None:
        config["reference"] = reference.identity()
    return config


def eval_system_prompt(plan: Plan) -> str | None:
    """The system prompt the trained policy generates under (reward-augmented runs), else None:
    the strategy's ``eval_system_prompt()``."""
    return plan.selection.eval_system_prompt()


def eval_scorer_node(cfg: DictConfig) -> Any:
    """Evaluation's scorer: ``evaluation.scorer`` when set, else the run's scorer."""
    own = cfg.evaluation.get("scorer")
    return key_node(own) if own else node(cfg, "scorer")


def answers_config(cfg: DictConfig, plan: Plan, system_prompt: str | None) -> dict:
    """One policy's scored held-out answers. ``system_prompt`` conditions the generation only
    (the scorer sees the plain conversation); the reference is always unconditioned (None), so
    its key is the same with or without reward augmentation and its answers are shared."""
    config = {
        "evaluation": node(cfg, "evaluation"),
        "scorer": eval_scorer_node(cfg),
        "system_prompt": system_prompt,
    }
    if system_prompt is not None:  # entries made before the scorer saw the plain conversation
        config["scored"] = "plain_conversation"
    return config


def stage_keys(cfg: DictConfig, plan: Plan | None = None) -> dict[str, str]:
    """Every stage's cache key for ``cfg``, as ``run_pipeline`` computes them (``implicit`` and
    ``pilot`` only when the selection needs them), without loading a model or touching the
    cache."""
    plan = plan or validate(cfg)
    key = stage_key
    keys = {"prompts": key("prompts", prompts_config(cfg, plan), [])}
    keys["sample"] = key("sample", sample_config(cfg, plan), [keys["prompts"]])
    keys["score"] = key("score", score_config(cfg, plan), [keys["sample"]])
    keys["denoise"] = key("denoise", denoise_config(cfg, plan), [keys["score"]])
    inputs = [keys["denoise"]]
    if plan.selection.needs_implicit:
        keys["implicit"] = key("implicit", implicit_config(cfg, plan), [keys["denoise"]])
        inputs.append(keys["implicit"])
    if plan.selection.needs_pilot:
        keys["pilot"] = key("pilot", pilot_config(cfg, plan), [keys["prompts"], keys["denoise"]])
        inputs.append(keys["pilot"])
    if plan.selection.needs_model:
        keys["model_scores"] = key("model_scores", model_scores_config(cfg, plan),
                                   [keys["denoise"]])
        inputs.append(keys["model_scores"])
    keys["select"] = key("select", select_config(cfg, plan), inputs)
    keys["train"] = key("train", train_config(cfg, plan), [keys["select"]])
    keys["answers_reference"] = key(
        "answers_reference", answers_config(cfg, plan, None),
        [keys["prompts"], str(plan.model.identity())])
    keys["answers_trained"] = key(
        "answers_trained", answers_config(cfg, plan, eval_system_prompt(plan)),
        [keys["prompts"], keys["train"]])
    return keys

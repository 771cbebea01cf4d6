"""The config schema: defaults live in the stage dataclasses, registered in Hydra's ConfigStore;
the option files of conf/ hold only what they change; every preset composes and validates; the
defaults are the values the committed results were made with; and the refactor left the cache
keys of the expensive stages (prompts, sample, score) as they were."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from sweetspot.config import SCHEMA_GROUP, config_dir, validate
from sweetspot.evaluation.evaluate import Evaluator
from sweetspot.sampling.hf import HFSampler
from sweetspot.sampling.openai import OpenAISampler
from sweetspot.sampling.vllm import VLLMSampler
from sweetspot.stage_keys import stage_keys
from sweetspot.training.config import TrainerConfig
from sweetspot.training.optim import build_optimizer, build_scheduler

CONF = config_dir()
GROUPS = ("task", "model", "sampler", "scorer", "denoiser", "selection", "loss", "trainer",
          "evaluation", "logger", "paths")
OPTION_FILES = sorted(p for g in GROUPS for p in (CONF / g).glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# Option files whose value equal to the schema default is kept on purpose (file -> keys). Empty:
# a value here would drift from the class the day its default changes.
DECLARED_RESTATEMENTS: dict[str, set[str]] = {}
# Option files written while other work was in flight, still restating their class's defaults
# with a _target_ (their checks xfail until converted). Empty: every option file is converted.
NOT_YET_CONVERTED: set[str] = set()


def needs_schema(path: Path) -> None:
    if f"{path.parent.name}/{path.stem}" in NOT_YET_CONVERTED:
        pytest.xfail(f"{path} is not converted to the schema yet")


def compose_cfg(*overrides: str, hydra: bool = False):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def schema_entry(data: dict) -> str | None:
    """The class a file's ``/schema@...: <class>`` defaults entry names, if any."""
    for entry in data.get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                if str(key).lstrip("/").startswith(f"{SCHEMA_GROUP}@"):
                    return value
    return None


def option_body(path: Path) -> tuple[dict, str | None]:
    """The file's own keys (under ``sampler:`` for the global-package offline preset) and the
    class of its schema, following a defaults entry to another option of the group (gpu -> cpu)."""
    data = raw(path)
    target = schema_entry(data)
    for entry in data.get("defaults", []):
        if target is None and isinstance(entry, str) and entry != "_self_":
            target = option_body(path.parent / f"{entry}.yaml")[1]
    body = {k: v for k, v in data.items() if k != "defaults"}
    if path.parent.name == "sampler" and "sampler" in body:  # @package _global_
        body = body["sampler"]
    return body, target


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_option_file_starts_from_its_schema(path: Path) -> None:
    needs_schema(path)
    body, target = option_body(path)
    assert target is not None, f"{path}: no `- /schema@_here_: <class>` defaults entry"
    assert "_target_" not in body, f"{path}: _target_ comes from the schema ({target})"
    get_class(target)  # importable


def restated(body: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Keys of ``body`` whose value equals the schema default (nested dataclass nodes walked);
    interpolations (``${seed}``) are wiring, not defaults."""
    same = []
    for key, value in body.items():
        default = defaults.get(key, object())
        if isinstance(value, str) and value.startswith("${"):
            continue
        if isinstance(value, dict) and isinstance(default, dict) and value:
            same += restated(value, default, f"{prefix}{key}.")
        elif value == default and type(value) is type(default):
            same.append(f"{prefix}{key}")
    return same


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_option_file_holds_only_what_it_changes(path: Path) -> None:
    """Every value an option file sets differs from its class's default (or is declared)."""
    needs_schema(path)
    body, target = option_body(path)
    if target is None:
        pytest.fail(f"{path}: no schema entry")
    defaults = OmegaConf.to_container(OmegaConf.structured(get_class(target)), resolve=False)
    unknown = [k for k in body if k not in defaults and k != "_target_"]
    assert not unknown, f"{path}: {unknown} are not fields of {target}"
    name = f"{path.parent.name}/{path.name}"
    same = [k for k in restated(body, defaults) if k not in DECLARED_RESTATEMENTS.get(name, set())]
    assert not same, f"{path}: {same} restate {target}'s defaults; delete them from the file"


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_default_and_every_preset_compose_and_validate(experiment: str | None) -> None:
    cfg = compose_cfg(*([f"experiment={experiment}"] if experiment else []), hydra=True)
    for group in GROUPS:  # every group node is typed by its schema
        choice = f"{group}/{cfg.hydra.runtime.choices[group]}"
        if choice not in NOT_YET_CONVERTED:
            assert OmegaConf.get_type(cfg[group]) is not dict, choice
    validate(cfg)


def test_the_default_trainer_is_the_command_lines() -> None:
    """``TrainerConfig()`` trains as ``make run`` does: the composed default differs only in
    its seed's wiring (``${train_seed}``, 0 by default)."""
    assert validate(compose_cfg()).trainer == TrainerConfig()
    cfg = TrainerConfig()
    # The values the committed results (docs/results/) were trained with, before the schema.
    ran = {"epochs": 2, "lr": 5e-4, "max_length": 384, "max_prompt_length": 192,
           "checkpoint_every_n_steps": 25, "batch_size": 4, "warmup_ratio": 0.1,
           "grad_accum": 1, "grad_clip": 1.0, "precision": "32-true"}
    assert {k: getattr(cfg, k) for k in ran} == ran
    assert cfg.optimizer["_target_"] == "torch.optim.AdamW"
    assert cfg.optimizer["weight_decay"] == 0.0
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.0)


def test_generation_defaults_are_what_the_command_line_ran() -> None:
    assert HFSampler().max_new_tokens == 96
    ev = Evaluator()
    assert (ev.max_new_tokens, ev.batch_size, ev.kl_batch_size) == (96, 32, 32)
    plan = validate(compose_cfg())
    assert plan.sampler.max_new_tokens == plan.evaluation.max_new_tokens == 96


def test_type_errors_fail_at_composition_naming_the_key() -> None:
    with pytest.raises(Exception, match=r"sampler\.n") as info:
        compose_cfg("sampler.n=eight")
    assert "eight" in str(info.value)


def reference_lr_factor(step: int, total: int, warmup: int, decay: str) -> float:
    """The schedule sweetspot trained with before it was built from torch schedulers, written
    out: warmup (s + 1) / (w + 1), then cosine / linear to 0, or constant."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return {"constant": 1.0, "linear": 1.0 - t, "cosine": (1.0 + math.cos(math.pi * t)) / 2}[decay]


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
@pytest.mark.parametrize(("total", "ratio"), [(1, 0.1), (7, 0.0), (10, 0.25), (64, 0.1)])
def test_lr_schedule_from_config_is_the_hand_written_curve(decay, total, ratio) -> None:
    cfg = TrainerConfig(warmup_ratio=ratio)
    cfg.lr_scheduler["decay"] = decay
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = build_optimizer(cfg.optimizer, [weight], cfg.lr, cfg.precision)
    warmup = int(ratio * total)
    scheduler = build_scheduler(cfg.lr_scheduler, optimizer, warmup, total)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        weight.grad = torch.ones_like(weight)
        optimizer.step()
        scheduler.step()
    expected = [cfg.lr * reference_lr_factor(s, total, warmup, decay) for s in range(total)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-18)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] is True  # 32-true: the fused kernel, as before


def test_a_schedule_function_as_target_composes_validates_and_keys() -> None:
    """``trainer.lr_scheduler._target_`` may name a function (transformers' schedules), not only
    a class: the config composes, validates (the dropped ``decay`` stays dropped), gets keys
    (only training and what follows change) and builds transformers' curve."""
    overrides = ("trainer.lr_scheduler._target_=transformers.get_cosine_schedule_with_warmup",
                 "~trainer.lr_scheduler.decay")
    cfg = compose_cfg(*overrides)
    plan = validate(cfg)
    assert plan.trainer.lr_scheduler == {
        "_target_": "transformers.get_cosine_schedule_with_warmup", "_partial_": True}
    keys, default = stage_keys(cfg, plan), stage_keys(compose_cfg())
    same = {s for s in keys if keys[s] == default[s]}
    assert same == {"prompts", "sample", "score", "denoise", "select", "answers_reference"}
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer(plan.trainer.optimizer, [weight], 1.0, plan.trainer.precision)
    scheduler = build_scheduler(plan.trainer.lr_scheduler, optimizer, 2, 6)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # transformers' curve: s / w during warmup (from 0), then half a cosine to 0.
    expected = [0.0, 0.5] + [(1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert seen == pytest.approx(expected, abs=1e-12)


def test_bad_optimizer_argument_names_the_key() -> None:
    from sweetspot.errors import ConfigError

    node = {**TrainerConfig().optimizer, "weight_decya": 0.1}
    with pytest.raises(ConfigError) as info:
        TrainerConfig(optimizer=node)
    assert info.value.field == "optimizer.weight_decya"


# Keys written down before the schema refactor (stage_keys on the default config and on
# sweet_spot_scaling): the user's cache holds hours of samples under them.
PINNED_KEYS = {
    (): {"prompts": "59dd49caf00ee9ad", "sample": "cc41d226506da89a",
         "score": "333ba78d15a0347d"},
    ("experiment=sweet_spot_scaling", "sampler.use_n=32"): {
        "prompts": "59dd49caf00ee9ad", "sample": "9faa81ab753cb23e",
        "score": "7a58edb588f894cb"},
}


@pytest.mark.parametrize("overrides", list(PINNED_KEYS), ids=["default", "sweet_spot_scaling"])
def test_sample_and_score_keys_survive_the_schema(overrides) -> None:
    keys = stage_keys(compose_cfg(*overrides))
    assert {s: keys[s] for s in ("prompts", "sample", "score")} == PINNED_KEYS[overrides]


@pytest.mark.parametrize("cls", [OpenAISampler, VLLMSampler])
def test_server_samplers_key_keeps_the_old_spelling(cls) -> None:
    """``max_new_tokens`` everywhere in config; the sample key of the OpenAI / vLLM samplers
    still spells it ``max_tokens``, as before the rename, so their cached samples stay valid."""
    sampler = cls(n=4, max_new_tokens=77)
    key = sampler.cache_config()
    assert key["max_tokens"] == 77 and "max_new_tokens" not in key
    fields = {f.name for f in dataclasses.fields(cls)}
    assert "max_new_tokens" in fields and "max_tokens" not in fields

"""One run, top to bottom: prompts -> sample -> score -> denoise -> select -> train -> evaluate.

Each stage is a cache entry (see cache.py) keyed by its own config node and its inputs' keys,
so a sweep over ``selection=`` or ``loss=`` samples and scores once. The run folder gets the
tables a researcher reads (responses, pairs, metrics, report) and ``stages.json``, which names
every cache entry the run used, so any result can be traced to the config that made it.

The stage objects (``config.Plan``) are used only through their base classes' interfaces, which
``sweetspot/README.md`` lists: this module never asks an object what it is.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from sweetspot import distributed
from sweetspot import stage_keys as keys
from sweetspot.cache import Entry, StageCache, worker_rank
from sweetspot.config import Plan, validate
from sweetspot.data import pairs_for_trl, read_table, write_json, write_jsonl, write_table
from sweetspot.errors import ConfigError, SweetspotError
from sweetspot.models import ModelSpec, Policy, resolve_model_dir
from sweetspot.scoring.base import Scorer, ShardOwner, all_shards
from sweetspot.selection.base import SelectionResult, SelectionStrategy

UNTIL = ("select", "train", "evaluate")


def node(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.to_container(cfg[key], resolve=True)


@dataclass
class RunState:
    cfg: DictConfig
    plan: Plan
    cache: StageCache
    run_dir: Path
    entries: dict[str, Entry] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    prompts: pd.DataFrame | None = None
    # Iterative rounds (sweetspot.rounds): training's reference when it is not the model trained
    # from (round_reference=initial), and evaluation's reference when it is not that model (pi_0).
    reference: ModelSpec | None = None
    baseline: ModelSpec | None = None

    def record(self, entry: Entry) -> Entry:
        self.entries[entry.stage] = entry
        # The cache already logged the stage once (computed or reused): no second line here.
        self.metrics[f"stage/{entry.stage}/reused"] = entry.reused
        self.metrics[f"stage/{entry.stage}/seconds"] = entry.meta.get("seconds", 0.0)
        for k, v in entry.meta.get("counts", {}).items():
            self.metrics[f"{entry.stage}/{k}"] = v
        return entry

    def policy(self, spec: ModelSpec, path: str | None = None) -> Policy:
        where = path or resolve_model_dir(spec, self.cache.root)
        if where not in self.policies:
            self.policies[where] = Policy(spec, where)
        return self.policies[where]


def stage_prompts(s: RunState) -> pd.DataFrame:
    """The prompt source's prompts: the task, or the data a sampler brings with its own prompts
    (``Sampler.prompt_source``, e.g. ``sampler=offline``)."""
    source = keys.prompt_source(s.plan)

    def compute(ctx: Any) -> dict:
        prompts = source.load()
        write_table(prompts, ctx.out_dir / "prompts.parquet")
        splits = prompts["split"].value_counts()
        return {"counts": {k: int(splits.get(k, 0)) for k in ("train", "heldout")}}

    config = keys.prompts_config(s.cfg, s.plan)
    entry = s.record(s.cache.get_or_compute("prompts", config, [], compute))
    return read_table(entry.file("prompts.parquet"))


def stage_sample(s: RunState, prompts: pd.DataFrame) -> pd.DataFrame:
    sampler = s.plan.sampler
    train = prompts[prompts["split"] == "train"].reset_index(drop=True)

    def compute(ctx: Any) -> dict:
        policy = s.policy(s.plan.model) if sampler.needs_model else None
        shares: dict[str, int] = {}
        if ctx.ranks.many:  # each rank samples its shards; rank 0 then assembles them
            resumed, shares = sampler.sample_share(train, policy, ctx.partial_dir, ctx.ranks)
            if not ctx.ranks.main:
                return {}
        table, stats = sampler.run(train, policy, ctx.partial_dir)
        if ctx.ranks.many:
            stats = {**stats, "shards_resumed": resumed, **shares}
        write_table(table, ctx.out_dir / "responses.parquet")
        skipped = table["skip_reason"].value_counts().to_dict() if "skip_reason" in table else {}
        return {
            "counts": {
                "prompts": len(train),
                "responses": len(table),
                **{f"skipped/{k}": int(v) for k, v in skipped.items()},
                **stats,
            }
        }

    entry = s.record(
        s.cache.get_or_compute(
            "sample",
            keys.sample_config(s.cfg, s.plan),
            [s.entries["prompts"].key],
            compute,
            every_rank=True,
        )
    )
    return read_table(entry.file("responses.parquet"))


def score_responses(scorer: Scorer, table: pd.DataFrame,
                    partial_dir: Path | None = None,
                    owned: ShardOwner = all_shards) -> dict[str, float]:
    """Add the scorer's columns in place; skipped rows (no response) keep NaN scores. Returns
    the scorer's statistics of the call. ``partial_dir``: resumable shards (``Scorer.run``);
    ``owned``: the shards this process scores (a rank's share, ``Ranks.owner``)."""
    live = table["response"].notna()
    result = scorer.run(table[live], partial_dir, owned)
    for col in result.scores.columns:
        table.loc[live, col] = result.scores[col]
    return result.stats


def stage_score(s: RunState, prompts: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    scorer = s.plan.scorer

    def compute(ctx: Any) -> dict:
        ranks = ctx.ranks
        sharded = ranks.many and scorer.shard_size() is not None
        if ranks.many and not sharded and not ranks.main:
            return {}  # a scorer without shards scores the table in one call, on rank 0
        extra = [c for c in prompts.columns if c not in responses.columns or c == "prompt_id"]
        table = responses.merge(prompts[extra], on="prompt_id", how="left")
        # each rank scores its shards; after the meeting point in ``owner`` every rank's are
        # on disk and the assembly reads them
        owned = ranks.owner() if sharded else all_shards
        stats = score_responses(scorer, table, ctx.partial_dir, owned)
        if sharded:
            stats = {**stats, **ranks.shares(int(stats.get("shards_computed", 0)))}
            if not ranks.main:
                return {}
        table["reward"] = table[scorer.column].astype(float)
        bad = int((~np.isfinite(table["reward"].to_numpy())).sum())
        write_table(table, ctx.out_dir / "scored.parquet")
        return {"counts": {"responses": len(table), "unscored": bad, **stats}}

    entry = s.record(
        s.cache.get_or_compute(
            "score", keys.score_config(s.cfg, s.plan), [s.entries["sample"].key], compute,
            every_rank=True,
        )
    )
    return read_table(entry.file("scored.parquet"))


def stage_denoise(s: RunState, scored: pd.DataFrame) -> pd.DataFrame:
    """Denoise the responses the later stages use (``Sampler.used``: the first ``use_n`` of each
    prompt; the key holds ``use_n``), with the comparisons the data came with, if any."""
    denoiser = s.plan.denoiser

    def compute(ctx: Any) -> dict:
        comparisons = s.plan.sampler.comparisons(scored["prompt_id"].unique())
        if comparisons is not None and comparisons.empty:
            comparisons = None
        result = denoiser.denoise(scored, comparisons)
        write_table(result.responses, ctx.out_dir / "denoised.parquet")
        if result.comparisons is not None and len(result.comparisons):
            write_table(result.comparisons, ctx.out_dir / "comparisons.parquet")
        return {
            "counts": {
                k: v
                for k, v in result.metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        }

    entry = s.record(
        s.cache.get_or_compute(
            "denoise",
            keys.denoise_config(s.cfg, s.plan),
            [s.entries["score"].key],
            compute,
        )
    )
    return read_table(entry.file("denoised.parquet"))


def selection_input(denoised: pd.DataFrame) -> pd.DataFrame:
    """What selection ranks: the denoised reward (the raw one kept as ``reward_raw``)."""
    table = denoised.rename(columns={"reward": "reward_raw"})
    table["reward"] = table["reward_denoised"]
    return table[table["response"].notna()].reset_index(drop=True)


def stage_implicit(s: RunState, denoised: pd.DataFrame) -> pd.DataFrame:
    """The implicit margin's sub-stage (Deng et al. 2025): DPO-train a copy of the run's model on
    a random subset of candidate pairs, then score every response's log-ratio to its start."""
    from sweetspot.scoring.implicit import ImplicitScorer
    from sweetspot.training.losses import DPOLoss
    from sweetspot.training.train import train_policy

    implicit = s.plan.selection.implicit_settings()
    table = selection_input(denoised)

    def compute(ctx: Any) -> dict:
        candidates = implicit.candidates.select(table).pairs
        size = min(implicit.subset_size, len(candidates))
        subset = candidates.sample(n=size, random_state=s.cfg.seed).reset_index(drop=True)
        subset = attach_texts(subset, s.prompts, table)
        policy = s.policy(s.plan.model)
        cfg = dataclasses.replace(
            s.plan.trainer,
            max_steps=implicit.steps,
            lr=implicit.lr,
            epochs=max(1, s.plan.trainer.epochs),
        )
        metrics = train_policy(
            subset,
            policy,
            cfg,
            DPOLoss(beta=implicit.beta),
            s.cache,
            ctx.out_dir,
            [],
            resume_dir=ctx.partial_dir,
        )
        if not ctx.ranks.main:  # every rank trains (DDP); rank 0 scores
            return {}
        scorer = ImplicitScorer(
            policy_path=str(ctx.out_dir / "checkpoint"),
            reference_path=policy.path,
            beta=implicit.beta,
            max_length=cfg.max_length,
            max_prompt_length=cfg.max_prompt_length,
        )
        scores = scorer.score(table)
        out = table[["prompt_id", "sample_id"]].copy()
        out["implicit_logratio"] = scores[f"{scorer.name}/logratio"].to_numpy()
        write_table(out, ctx.out_dir / "implicit.parquet")
        return {"counts": {"pairs_trained": size, "steps": metrics.get("train/steps", 0)}}

    entry = s.record(
        s.cache.get_or_compute("implicit", keys.implicit_config(s.cfg, s.plan),
                               [s.entries["denoise"].key], compute, every_rank=True)
    )
    logratio = read_table(entry.file("implicit.parquet"))
    return denoised.merge(logratio, on=["prompt_id", "sample_id"], how="left")


def stage_model_scores(s: RunState, strategy: SelectionStrategy,
                       denoised: pd.DataFrame) -> SelectionStrategy:
    """The model-scoring sub-stage of a strategy that ``needs_model`` (``selection=influence``):
    the run's model scores candidate pairs (cached, keyed by the strategy's ``model_config``);
    returns the strategy bound to those scores."""
    from sweetspot.selection.base import ModelInputs

    table = selection_input(denoised)

    def compute(ctx: Any) -> dict:
        inputs = ModelInputs(policy=s.policy(s.plan.model), trainer=s.plan.trainer,
                             seed=int(s.cfg.seed))
        scores, counts = strategy.score_with_model(table, inputs)
        write_table(scores, ctx.out_dir / "model_scores.parquet")
        return {"counts": counts}

    entry = s.record(
        s.cache.get_or_compute("model_scores", keys.model_scores_config(s.cfg, s.plan),
                               [s.entries["denoise"].key], compute)
    )
    return strategy.with_model_scores(read_table(entry.file("model_scores.parquet")))


def stage_select(s: RunState, prompts: pd.DataFrame, denoised: pd.DataFrame) -> pd.DataFrame:
    strategy = s.plan.selection
    if strategy.needs_implicit:
        denoised = stage_implicit(s, denoised)
    if strategy.needs_pilot:  # the pilot picks the strategy the full run selects with
        from sweetspot.pilot_stage import stage_pilot

        strategy = stage_pilot(s, prompts, denoised)
    if strategy.needs_model:
        strategy = stage_model_scores(s, strategy, denoised)

    def compute(ctx: Any) -> dict:
        table = selection_input(denoised)
        result = strategy.select(table)
        pairs = attach_texts(result.pairs, prompts, table)
        write_table(pairs, ctx.out_dir / "pairs.parquet")
        return {"counts": select_counts(denoised, result, len(pairs))}

    inputs = [s.entries[k].key for k in ("denoise", "implicit", "pilot", "model_scores")
              if k in s.entries]
    entry = s.record(
        s.cache.get_or_compute("select", keys.select_config(s.cfg, s.plan), inputs, compute)
    )
    return read_table(entry.file("pairs.parquet"))


def select_counts(denoised: pd.DataFrame, result: SelectionResult, pairs: int) -> dict[str, float]:
    """The select stage's counts: every prompt that reached it gives a pair or is counted by
    reason. A prompt whose every response is missing (``response`` None: the sampler skipped
    it, or the data had none) never reaches the strategy (``selection_input`` drops such rows),
    so it is counted here, as ``skipped/no_responses``, and in ``prompts``."""
    answered = denoised.loc[denoised["response"].notna(), "prompt_id"].nunique()
    everyone = denoised["prompt_id"].nunique()
    counts = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    counts |= {"pairs": pairs, "prompts": int(everyone)}
    counts |= {f"skipped/{k}": int(v) for k, v in result.skipped.items()}
    if everyone > answered:
        counts["skipped/no_responses"] = int(everyone - answered)
    return counts


def attach_texts(
    pairs: pd.DataFrame, prompts: pd.DataFrame, responses: pd.DataFrame
) -> pd.DataFrame:
    """Give each pair its prompt messages and both responses' texts (TRL's columns)."""
    text = responses.set_index(["prompt_id", "sample_id"])["response"]
    out = pairs.drop(columns=[c for c in ("prompt", "chosen", "rejected") if c in pairs])
    out["chosen"] = text.reindex(
        list(zip(out["prompt_id"], out["chosen_sample_id"], strict=True))
    ).to_numpy()
    out["rejected"] = text.reindex(
        list(zip(out["prompt_id"], out["rejected_sample_id"], strict=True))
    ).to_numpy()
    out = out.merge(prompts[["prompt_id", "prompt"]], on="prompt_id", how="left")
    first = ["prompt_id", "prompt", "chosen", "rejected"]
    return out[first + [c for c in out.columns if c not in first]]


def stage_train(s: RunState, pairs: pd.DataFrame) -> Path:
    from sweetspot.training.train import train_policy

    if pairs.empty:
        raise SweetspotError(
            "selection produced no pairs, so there is nothing to train on; see "
            "the skipped counts in the log (e.g. every prompt had sigma = 0)"
        )
    policy = s.policy(s.plan.model)
    keep_order = s.plan.selection.keep_order
    if keep_order and "order" in pairs:
        pairs = pairs.sort_values("order", kind="stable").reset_index(drop=True)

    def compute(ctx: Any) -> dict:
        metrics = train_policy(
            pairs,
            policy,
            s.plan.trainer,
            s.plan.loss,
            s.cache,
            ctx.out_dir,
            s.plan.logger.loggers,
            keep_order=keep_order,
            resume_dir=ctx.partial_dir,
            reference=s.policy(s.reference) if s.reference is not None else None,
        )
        return {"metrics": metrics}

    config = keys.train_config(s.cfg, s.plan, s.reference)
    entry = s.record(s.cache.get_or_compute("train", config, [s.entries["select"].key], compute,
                                            every_rank=True))  # Lightning DDP/FSDP: all ranks
    s.metrics.update(entry.meta.get("metrics", {}))
    return entry.file("checkpoint")


def stage_answers(
    s: RunState,
    name: str,
    policy: Policy,
    prompts: pd.DataFrame,
    inputs: list[str],
    system_prompt: str | None,
    kl_reference: Policy | None = None,
) -> pd.DataFrame:
    """Held-out answers of one policy, scored (cached per policy); with ``kl_reference``, each
    answer's log-ratio to it as well (``kl_logratio``: the KL estimate's terms)."""
    evaluator, scorer = s.plan.evaluation, s.plan.eval_scorer

    def compute(ctx: Any) -> dict:
        held = evaluator.prompts(prompts)
        table, shares = evaluator.answer_shards(held, policy, system_prompt,
                                                name.replace("_", " "), ctx.partial_dir,
                                                ctx.ranks)
        if table is None:  # a rank other than 0: its shards are written
            return {}
        score_responses(scorer, table)
        if kl_reference is not None:
            table["kl_logratio"] = evaluator.kl_logratio(table, policy, kl_reference)
        write_table(table, ctx.out_dir / "answers.parquet")
        return {"counts": {"prompts": int(held.shape[0]), **shares}}

    config = keys.answers_config(s.cfg, s.plan, system_prompt)
    entry = s.record(s.cache.get_or_compute(name, config, inputs, compute, every_rank=True))
    return read_table(entry.file("answers.parquet"))


def stage_evaluate(s: RunState, prompts: pd.DataFrame, checkpoint: Path) -> dict:
    from sweetspot.evaluation.evaluate import compare

    system = keys.eval_system_prompt(s.plan)
    if not (prompts["split"] == "heldout").any():
        raise SweetspotError("evaluation needs held-out prompts and this run has none (offline "
                             "data has no held-out split): set until=train, or use a task with "
                             "held-out prompts")
    trained_spec = ModelSpec(
        source="hf",
        name_or_path=str(checkpoint),
        dtype=s.plan.model.dtype,
        max_context=s.plan.model.max_context,
    )
    trained = s.policy(trained_spec, str(checkpoint))
    baseline = s.baseline or s.plan.model
    reference = s.policy(baseline)
    ref_answers = stage_answers(
        s,
        "answers_reference",
        reference,
        prompts,
        [s.entries["prompts"].key, str(baseline.identity())],
        None,  # the reference answers unconditioned: shared with every job of the sweep
    )
    new_answers = stage_answers(
        s,
        "answers_trained",
        trained,
        prompts,
        [s.entries["prompts"].key, s.entries["train"].key],
        system,
        kl_reference=reference,
    )
    if not s.cache.ranks.main:  # the other ranks' part of evaluation ends with the answers
        return {}
    scorer = s.plan.eval_scorer
    metrics = compare(new_answers, ref_answers, scorer.column, f"{scorer.name}/detail")
    write_table(
        new_answers.merge(
            ref_answers[["prompt_id", "sample_id", "response", scorer.column]],
            on=["prompt_id", "sample_id"],
            suffixes=("", "_reference"),
        ),
        s.run_dir / "eval.parquet",
    )
    return metrics


def describe(values: pd.Series, prefix: str) -> dict[str, float]:
    v = values.dropna().astype(float)
    if v.empty:
        return {}
    return {
        f"{prefix}/mean": float(v.mean()),
        f"{prefix}/std": float(v.std(ddof=0)),
        f"{prefix}/min": float(v.min()),
        f"{prefix}/max": float(v.max()),
    }


def run_pipeline(
    cfg: DictConfig,
    run_dir: str | Path,
    model: ModelSpec | None = None,
    reference: ModelSpec | None = None,
    baseline: ModelSpec | None = None,
) -> dict[str, Any]:
    """Validate, then run every stage; returns the run's metrics (also in metrics.json).

    ``model``, ``reference``, ``baseline``: one round of an iterative run (``sweetspot.rounds``)
    samples and trains from ``model`` (the last round's policy) instead of the configured model,
    with ``reference`` as training's reference when set, and evaluates against ``baseline``."""
    started = time.time()
    run_dir = Path(run_dir)
    plan = validate(cfg)
    if model is not None:
        plan.model = model
    if cfg.until not in UNTIL:
        raise ConfigError("until", f"must be one of {list(UNTIL)}, got {cfg.until!r}")
    ranks = distributed.setup()  # several ranks under torchrun or srun, else one
    if ranks.many:
        check_ranks(cfg, plan, ranks)
    cache = StageCache(os.path.expanduser(str(cfg.paths.cache_dir)), ranks)
    s = RunState(cfg, plan, cache, run_dir, reference=reference, baseline=baseline)
    config = OmegaConf.to_container(cfg, resolve=True)
    if ranks.main:  # the run folder, its loggers and its report are rank 0's
        plan.logger.start(run_dir, str(cfg.get("name", "run")), config)
    try:
        prompts = s.prompts = stage_prompts(s)
        responses = stage_sample(s, prompts)
        scored = stage_score(s, prompts, responses)
        denoised = stage_denoise(s, plan.sampler.used(scored))
        if ranks.main:
            write_table(denoised, run_dir / "responses.parquet")
        s.metrics.update(describe(denoised["reward"], "reward"))
        pairs = stage_select(s, prompts, denoised)
        if ranks.main:
            write_table(pairs, run_dir / "pairs.parquet")
            write_jsonl(pairs_for_trl(pairs), run_dir / "pairs.jsonl")
            plan.logger.log_pairs(pairs)
        s.metrics.update(describe(pairs["margin"], "pairs/margin"))
        if cfg.until in ("train", "evaluate"):
            checkpoint = stage_train(s, pairs)
            if not ranks.many and worker_rank() != 0:  # a worker Lightning started at fit
                return s.metrics
            if ranks.main:
                link(run_dir / "checkpoint", checkpoint)
        if cfg.until == "evaluate":
            s.metrics.update(stage_evaluate(s, prompts, checkpoint))
        if not ranks.main:  # the other ranks' part ends with the last sharded stage
            return s.metrics
        s.metrics["run/seconds"] = round(time.time() - started, 1)
        write_json({k: s.metrics[k] for k in sorted(s.metrics)}, run_dir / "metrics.json")
        write_json(
            {
                k: {"key": e.key, "path": str(e.path), "reused": e.reused}
                for k, e in s.entries.items()
            },
            run_dir / "stages.json",
        )
        from sweetspot.report import write_run_report

        images = write_run_report(run_dir)
        plan.logger.log_summary(s.metrics)
        plan.logger.log_images(images)
    finally:
        if ranks.main:
            plan.logger.finish()
    return s.metrics


def check_ranks(cfg: DictConfig, plan: Plan, ranks: distributed.Ranks) -> None:
    """Before any work: a run of several ranks trains on all of them (Lightning DDP/FSDP), so
    the trainer's devices x num_nodes must be the world size (Lightning would say so only at
    ``fit``, after sampling and scoring). The pilot, whose short training runs on rank 0 alone,
    is refused rather than left to wait for the other ranks (iterative rounds refuse
    trainer.devices > 1 themselves, ``rounds.check``)."""
    if plan.selection.needs_pilot:
        raise ConfigError("selection", "the pilot's short training runs in one process: run "
                          "selection=pilot without torchrun/srun ranks")
    if cfg.until not in ("train", "evaluate"):
        return
    trainer = plan.trainer
    devices = ranks.local_world if trainer.devices == -1 else trainer.devices
    if devices * trainer.num_nodes != ranks.world:
        nodes = max(1, ranks.world // max(1, ranks.local_world))
        raise ConfigError(
            "trainer.devices",
            f"this job has {ranks.world} ranks ({ranks.local_world} on this node) and every "
            f"rank trains, but trainer.devices x trainer.num_nodes = {trainer.devices} x "
            f"{trainer.num_nodes}: set trainer=ddp (or fsdp) trainer.devices="
            f"{ranks.local_world} trainer.num_nodes={nodes}, or until=select",
        )


def link(path: Path, target: Path) -> None:
    """Point the run folder at a cache entry instead of copying it (checkpoints are large)."""
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target.resolve(), target_is_directory=True)

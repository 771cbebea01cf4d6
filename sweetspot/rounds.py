"""Iterative rounds (``rounds=K``): online, iterative DPO on the stage cache.

Round 1 is the plain run. Each later round samples from the last round's policy, scores,
selects and trains from that policy again; the training reference is the initial policy pi_0
(``round_reference=initial``, RLHFlow's choice) or the last round's (``previous``). Every round
is evaluated on the same held-out prompts against pi_0, so the rounds' figures line up and pi_0's
answers are computed once.

A round is one ``pipeline.run_pipeline`` call in ``<run>/round<r>/`` whose model is the last
round's merged checkpoint (``RoundPolicy``). That policy's identity is the key of the train
entry that made it, which already hashes everything upstream (the initial model, the data, the
trainer), so every stage of a round is keyed by its input policy: the sample key holds it, and
score, select, train and the answers chain from there. Round 1 uses the configured model, so its
keys are exactly a ``rounds=1`` run's (the default run's samples are reused by
``experiment=iterative``), and a killed run resumes in the round where it stopped: the finished
rounds' entries are all found, and the interrupted stage resumes from its partial folder.

The run folder holds each round's folder, ``rounds.csv`` (one row per round: held-out reward
with its CI against pi_0, win rate, KL to pi_0, the round's own samples' mean reward, pairs),
``metrics.json`` with every round's metrics prefixed ``round<r>/`` plus the final round's under
the usual keys, ``stages.json`` likewise, the final round's tables, and ``report.md`` with the
by-round table and plot (``report.rounds_section``).
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, open_dict

from sweetspot.cache import worker_rank
from sweetspot.config import validate
from sweetspot.data import write_json
from sweetspot.errors import ConfigError
from sweetspot.models import ModelSpec
from sweetspot.pipeline import link, run_pipeline

ROUND_REFERENCES = ("initial", "previous")
# The final round's files the run folder shows, as a one-round run's folder does.
FINAL_FILES = ("responses.parquet", "pairs.parquet", "pairs.jsonl", "eval.parquet", "pilot.csv")
ROUND_COLUMNS = {  # rounds.csv column -> the round's metric
    "reward": "eval/reward_trained",
    "reward_initial": "eval/reward_reference",
    "reward_delta": "eval/reward_delta",
    "win_rate": "eval/win_rate",
    "kl_estimate": "eval/kl_estimate",
    "strict_accuracy": "eval/strict_accuracy/trained",
    "sample_reward": "reward/mean",
    "pairs": "select/pairs",
    "pair_margin": "pairs/margin/mean",
    "train_loss": "train/loss",
    "pilot_pick": "pilot/pick",
    "seconds": "run/seconds",
}


@dataclass(kw_only=True)
class RoundPolicy(ModelSpec):
    """The policy a round starts from: the last round's merged checkpoint (``name_or_path``).
    Its identity is the key of the train entry that made it (``trained_by``), not the folder's
    file listing, so a round's cache keys follow its input policy and survive a moved cache."""

    trained_by: str = ""

    def identity(self) -> dict:
        return {"source": "round", "train": self.trained_by}


def round_count(cfg: DictConfig) -> int:
    """``rounds`` (top-level key; 1 when absent), checked."""
    rounds = cfg.get("rounds", 1)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ConfigError("rounds", f"must be an integer >= 1, got {rounds!r}")
    return rounds


def check(cfg: DictConfig) -> str:
    """The settings an iterative run needs; returns ``round_reference``."""
    reference = cfg.get("round_reference", "initial")
    if reference not in ROUND_REFERENCES:
        raise ConfigError("round_reference",
                          f"must be one of {list(ROUND_REFERENCES)}, got {reference!r}")
    if cfg.until not in ("train", "evaluate"):
        raise ConfigError("until", "rounds > 1 trains in every round: set until=train or "
                                   f"until=evaluate, got {cfg.until!r}")
    plan = validate(cfg)
    if plan.trainer.save != "merged":
        raise ConfigError("trainer.save", "rounds > 1 starts each round from the last round's "
                                          "merged weights: set trainer.save=merged")
    if plan.trainer.devices != 1 or plan.trainer.num_nodes != 1:
        raise ConfigError("rounds", "iterative rounds run on one device (trainer.devices=1, "
                                    "trainer.num_nodes=1) for now")
    return str(reference)


def run_rounds(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """``rounds=1``: the plain pipeline. More: every round in its folder, then the run folder's
    summary (see the module docstring). Returns the metrics written to metrics.json."""
    rounds = round_count(cfg)
    if rounds == 1:
        return run_pipeline(cfg, run_dir)
    reference_mode = check(cfg)
    run_dir = Path(run_dir)
    initial = validate(cfg).model
    start: RoundPolicy | None = None
    metrics: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    rows = []
    for r in range(1, rounds + 1):
        folder = run_dir / f"round{r}"
        reference = initial if start is not None and reference_mode == "initial" else None
        got = run_pipeline(round_config(cfg, r), folder, model=start, reference=reference,
                           baseline=initial)
        if worker_rank() != 0:  # not reached: check() keeps rounds on one device
            return got
        recorded = json.loads((folder / "stages.json").read_text())
        metrics |= {f"round{r}/{k}": v for k, v in got.items()}
        stages |= {f"round{r}/{k}": v for k, v in recorded.items()}
        rows.append({"round": r, **{c: got.get(m) for c, m in ROUND_COLUMNS.items()},
                     **ci_columns(got)})
        start = RoundPolicy(
            source="hf",
            name_or_path=str(Path(recorded["train"]["path"]) / "checkpoint"),
            dtype=initial.dtype,
            max_context=initial.max_context,
            trained_by=recorded["train"]["key"],
        )
    metrics |= got  # the final round's figures under the usual keys
    metrics["rounds"] = rounds
    metrics["run/seconds"] = round(sum(r["seconds"] or 0.0 for r in rows), 1)
    table = pd.DataFrame(rows)
    table.to_csv(run_dir / "rounds.csv", index=False)
    final = run_dir / f"round{rounds}"
    for name in FINAL_FILES:
        if (final / name).is_file():
            shutil.copyfile(final / name, run_dir / name)
    if (final / "checkpoint").exists():
        link(run_dir / "checkpoint", final / "checkpoint")
    write_json({k: metrics[k] for k in sorted(metrics)}, run_dir / "metrics.json")
    write_json(stages, run_dir / "stages.json")
    from sweetspot.report import write_run_report

    write_run_report(run_dir)
    return metrics


def round_config(cfg: DictConfig, r: int) -> DictConfig:
    """The round's config: the run's, named ``<name>-round<r>`` (the tracker's run name)."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.name = f"{cfg.get('name', 'run')}-round{r}"
    return out


def ci_columns(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The reward difference's and win rate's 95% CI bounds as columns."""
    out: dict[str, float | None] = {}
    for column, key in (("reward_delta", "eval/reward_delta_ci95"),
                        ("win_rate", "eval/win_rate_ci95")):
        bounds = metrics.get(key) or [None, None]
        out[f"{column}_low"], out[f"{column}_high"] = bounds[0], bounds[1]
    return out

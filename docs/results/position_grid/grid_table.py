"""The position grid as one table: each pair's trained reward against the reference, and
against max/mu-2sigma on the same prompts (`stats.arm_difference`, one seed: prompts only).
Usage: python docs/results/position_grid/grid_table.py GRID_SWEEP_DIR... SCALING_ALL_DIR
(several grid sweep folders when the grid was run in parts)
max/min and max/mu-2sigma come from the scaling study's N = 16, seed 0 jobs
(check_shared_cells.py shows they are the same pairs)."""

import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from sweetspot.stats import arm_difference

*grid_dirs, scaling_dir = [Path(a) for a in sys.argv[1:]]


def overrides(job: Path) -> dict[str, str]:
    listed = yaml.safe_load((job / ".hydra/overrides.yaml").read_text())
    return dict(o.split("=", 1) for o in listed)


jobs: dict[str, Path] = {}
for job in sorted(p for d in grid_dirs for p in d.iterdir() if (p / ".hydra").is_dir()):
    if (job / "metrics.json").exists():
        jobs[overrides(job)["selection.pair"]] = job
for job in sorted(p for p in scaling_dir.iterdir() if (p / ".hydra").is_dir()):
    over = overrides(job)
    if over["sampler.use_n"] == "16" and over["train_seed"] == "0":
        jobs[{"max_min": "max/min", "sweet_spot": "max/mu-2sigma"}[over["selection"]]] = job


def rewards(job: Path) -> pd.Series:
    table = pd.read_parquet(job / "eval.parquet")
    return table.set_index(["prompt_id", "sample_id"]).sort_index()["score/rules"]


base = rewards(jobs["max/mu-2sigma"])
print("| pair | pairs | reward delta vs reference [95% CI] | win rate [95% CI] | "
      "minus max/mu-2sigma [95% CI] | strict acc. |")
print("|---|---|---|---|---|---|")
for pair, job in sorted(jobs.items(), key=lambda kv: -json.loads(
        (kv[1] / "metrics.json").read_text())["eval/reward_delta"]):
    m = json.loads((job / "metrics.json").read_text())
    lo, hi = m["eval/reward_delta_ci95"]
    wlo, whi = m["eval/win_rate_ci95"]
    r = rewards(job).loc[base.index]
    diff, _ = arm_difference([r.to_numpy()], [base.to_numpy()],
                             base.index.get_level_values("prompt_id"))
    vs = "(itself)" if pair == "max/mu-2sigma" else (
        f"{diff.estimate:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]")
    print(f"| {pair} | {m['select/pairs']} | {m['eval/reward_delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
          f" | {m['eval/win_rate']:.3f} [{wlo:.3f}, {whi:.3f}] | {vs} |"
          f" {m['eval/strict_accuracy/trained']:.3f} |")

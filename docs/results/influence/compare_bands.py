"""The influence study's table: each arm against the reference, and each pair of arms, on the
same 120 held-out prompts. Both intervals come from ``sweetspot.stats.arm_difference``: a
paired bootstrap over prompts of the seed-averaged difference, and a t interval over the
training seeds that both arms have. Reads the job folders of the sweep (run.sh's OUT; several
folders when the seeds ran as separate sweeps).
Usage: python docs/results/influence/compare_bands.py multirun/influence [multirun/influence_s12]"""

import sys
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sweetspot.stats import arm_difference

roots = [Path(a) for a in sys.argv[1:]] or [Path("multirun/influence")]
rewards: dict[str, dict[int, pd.Series]] = defaultdict(dict)
reference: pd.Series | None = None
pairs: dict[str, dict[int, pd.DataFrame]] = defaultdict(dict)
for job in sorted(p for root in roots for p in root.iterdir() if p.is_dir()):
    if not (job / "eval.parquet").exists():
        continue
    listed = yaml.safe_load((job / ".hydra/overrides.yaml").read_text())
    over = dict(o.split("=", 1) for o in listed)
    band, seed = over["selection.band"], int(over["train_seed"])
    table = pd.read_parquet(job / "eval.parquet").set_index(["prompt_id", "sample_id"])
    table = table.sort_index()
    rewards[band][seed] = table["score/rules"]
    reference = table["score/rules_reference"]
    pairs[band][seed] = pd.read_parquet(job / "pairs.parquet")


def compare(a: dict[int, pd.Series], b: dict[int, pd.Series] | pd.Series) -> str:
    seeds = sorted(set(a) & set(b)) if isinstance(b, dict) else sorted(a)
    index = reference.index
    xs = [a[s].loc[index].to_numpy() for s in seeds]
    ys = [(b[s] if isinstance(b, dict) else b).loc[index].to_numpy() for s in seeds]
    by_prompt, by_seed = arm_difference(xs, ys, index.get_level_values("prompt_id"))
    seed_ci = "n/a (1 seed)" if len(seeds) < 2 else f"[{by_seed.low:+.3f}, {by_seed.high:+.3f}]"
    return (f"{len(seeds)} | {by_prompt.estimate:+.3f} | "
            f"[{by_prompt.low:+.3f}, {by_prompt.high:+.3f}] | {seed_ci}")


if reference is None:
    sys.exit(f"no finished job under {', '.join(map(str, roots))}")
arms = [b for b in ("medium", "top", "random") if b in rewards]
print(f"reference mean reward on {len(reference)} held-out prompts: {reference.mean():.3f}\n")
print("| arm | pairs | mean TIF of its pairs | seeds | trained - reference | 95% CI, prompts |"
      " 95% CI, seeds |")
print("|---|---|---|---|---|---|---|")
for arm in arms:
    first = pairs[arm][min(pairs[arm])]
    tif = first["tif"].mean() if "tif" in first else np.nan
    print(f"| {arm} | {len(first)} | {tif:.3g} | {compare(rewards[arm], reference)} |")
print("\n| difference | seeds | estimate | 95% CI, prompts | 95% CI, seeds |")
print("|---|---|---|---|---|")
for a, b in combinations(arms, 2):
    print(f"| {a} - {b} | {compare(rewards[a], rewards[b])} |")

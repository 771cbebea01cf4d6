"""sweet_spot minus max_min at each N, on the same 120 held-out prompts, with both intervals
of ``sweetspot.stats.arm_difference``: a paired bootstrap over prompts of the seed-averaged
difference, and a t interval over the training seeds. Reads the job folders that run.sh links
into OUT/all. Usage: python docs/results/sweet_spot_scaling/compare_arms.py OUT/all"""

import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import yaml

from sweetspot.stats import arm_difference

root = Path(sys.argv[1] if len(sys.argv) > 1 else "multirun/sweet_spot_scaling/all")
rewards: dict[tuple[str, int], dict[int, pd.Series]] = defaultdict(dict)
for job in sorted(root.iterdir()):
    if not (job / "eval.parquet").exists():
        continue
    listed = yaml.safe_load((job / ".hydra/overrides.yaml").read_text())
    over = dict(o.split("=", 1) for o in listed)
    table = pd.read_parquet(job / "eval.parquet").sort_values(["prompt_id", "sample_id"])
    rewards[(over["selection"], int(over["sampler.use_n"]))][int(over["train_seed"])] = (
        table.set_index(["prompt_id", "sample_id"])["score/rules"])

print("| N | seeds | sweet_spot - max_min (trained reward) | 95% CI, prompts | 95% CI, seeds |")
print("|---|---|---|---|---|")
for n in (4, 8, 16, 32):
    ss, mm = rewards.get(("sweet_spot", n), {}), rewards.get(("max_min", n), {})
    seeds = sorted(set(ss) & set(mm))
    if not seeds:
        print(f"| {n} | 0 | (same pairs as max_min: not trained twice) | | |" if n <= 8 else
              f"| {n} | 0 | not run | | |")
        continue
    index = mm[seeds[0]].index
    a = [ss[s].loc[index].to_numpy() for s in seeds]
    b = [mm[s].loc[index].to_numpy() for s in seeds]
    by_prompt, by_seed = arm_difference(a, b, index.get_level_values("prompt_id"))
    seed_ci = "n/a (1 seed)" if len(seeds) < 2 else f"[{by_seed.low:+.3f}, {by_seed.high:+.3f}]"
    print(f"| {n} | {len(seeds)} | {by_prompt.estimate:+.3f} | "
          f"[{by_prompt.low:+.3f}, {by_prompt.high:+.3f}] | {seed_ci} |")

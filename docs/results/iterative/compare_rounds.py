"""The iterative study's table: each round's policy against pi_0 and against the round before,
on the same 120 held-out prompts (paired bootstrap over prompts, ``sweetspot.stats``), with the
answers' length and IFEval strict accuracy. Reads the run folder's ``round<r>/eval.parquet``.
Usage: python docs/results/iterative/compare_rounds.py outputs/iterative/initial"""

import json
import sys
from pathlib import Path

import pandas as pd

from sweetspot.stats import reward_delta

root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/iterative/initial")
rounds = sorted((p for p in root.glob("round*") if (p / "eval.parquet").exists()),
                key=lambda p: int(p.name.removeprefix("round")))
if not rounds:
    sys.exit(f"no finished round under {root}")
tables = {int(p.name.removeprefix("round")): pd.read_parquet(p / "eval.parquet")
          .sort_values(["prompt_id", "sample_id"]).reset_index(drop=True) for p in rounds}
first = tables[min(tables)]
metrics = json.loads((rounds[0] / "metrics.json").read_text())
pi0 = first["score/rules_reference"].mean()
print(f"pi_0 on {len(first)} held-out prompts: mean reward {pi0:.3f}, "
      f"strict accuracy {metrics['eval/strict_accuracy/reference']:.3f}\n")
print("| round | reward | vs pi_0 [95% CI] | vs previous round [95% CI] | strict accuracy |"
      " mean answer tokens | answers cut at the limit |")
print("|---|---|---|---|---|---|---|")
previous = None
for r, t in tables.items():
    ids = t["prompt_id"].to_numpy()
    vs0 = reward_delta(t["score/rules"].to_numpy(), t["score/rules_reference"].to_numpy(), ids)
    if previous is None:
        vs_prev = "(as vs pi_0)"
    else:
        assert (previous["prompt_id"].to_numpy() == ids).all()
        d = reward_delta(t["score/rules"].to_numpy(), previous["score/rules"].to_numpy(), ids)
        vs_prev = f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
    strict = t["rules/strict"].eq(1).mean() if "rules/strict" in t else float("nan")
    cut = int((t["finish_reason"] == "length").sum())
    ci0 = f"{vs0.estimate:+.3f} [{vs0.low:+.3f}, {vs0.high:+.3f}]"
    print(f"| {r} | {t['score/rules'].mean():.3f} | {ci0}"
          f" | {vs_prev} | {strict:.3f} | {t['num_tokens'].mean():.1f} | {cut} of {len(t)} |")
    previous = t

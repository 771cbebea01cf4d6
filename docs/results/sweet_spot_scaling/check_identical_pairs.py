"""Which N make sweet_spot's pairs identical to max_min's on the study's samples.

Runs selection only (`until=select`: the cached samples and scores are reused, no model is
loaded) for both strategies at each N and compares, prompt by prompt, the chosen and rejected
sample ids. Usage: python docs/results/sweet_spot_scaling/check_identical_pairs.py OUT_DIR
"""

import subprocess
import sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1] if len(sys.argv) > 1 else "multirun/sweet_spot_scaling/selection_only")
rows = []
for n in (4, 8, 16, 32):
    pairs = {}
    for strategy in ("max_min", "sweet_spot"):
        run = out / f"{strategy}_n{n}"
        subprocess.run(
            ["sweetspot", "experiment=sweet_spot_scaling", "until=select", "logger=none",
             f"selection={strategy}", f"sampler.use_n={n}", f"hydra.run.dir={run}"],
            check=True, capture_output=True)
        pairs[strategy] = pd.read_parquet(run / "pairs.parquet").set_index("prompt_id")
    mm, ss = pairs["max_min"], pairs["sweet_spot"]
    both = mm.merge(ss, left_index=True, right_index=True, suffixes=("_mm", "_ss"), how="outer")
    same = (both["chosen_mm"] == both["chosen_ss"]) & (both["rejected_mm"] == both["rejected_ss"])
    rows.append({"N": n, "prompts with a pair": len(both),
                 "rejected differs": int((both["rejected_mm"] != both["rejected_ss"]).sum()),
                 "share differing": round(float(1 - same.mean()), 3),
                 "identical pairs": bool(same.all())})
print(pd.DataFrame(rows).to_string(index=False))

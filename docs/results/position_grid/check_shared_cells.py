"""position_grid's max/min and max/mu-2sigma at N = 16 build the same training pairs as
sweet_spot_scaling's max_min and sweet_spot at N = 16 (selection only, no model loaded).
Usage: python docs/results/position_grid/check_shared_cells.py OUT_DIR"""

import subprocess
import sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1] if len(sys.argv) > 1 else "multirun/position_grid/selection_only")
COLUMNS = ["prompt_id", "prompt", "chosen", "rejected", "weight", "route"]


def pairs(name: str, *overrides: str) -> pd.DataFrame:
    run = out / name
    subprocess.run(["sweetspot", "until=select", "logger=none", *overrides,
                    f"hydra.run.dir={run}"], check=True, capture_output=True)
    table = pd.read_parquet(run / "pairs.parquet")
    return table[[c for c in COLUMNS if c in table]].astype(str).reset_index(drop=True)


for grid_pair, study_selection in (("max/min", "max_min"), ("max/mu-2sigma", "sweet_spot")):
    grid = pairs(grid_pair.replace("/", "_"), "experiment=position_grid",
                 f"selection.pair={grid_pair}")
    study = pairs(study_selection, "experiment=sweet_spot_scaling", "sampler.use_n=16",
                  f"selection={study_selection}")
    print(f"{grid_pair} (grid) vs {study_selection} N=16 (scaling): {len(grid)} pairs,",
          "identical" if grid.equals(study) else "DIFFERENT")

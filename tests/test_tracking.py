"""The CSV logger receives every scalar metric and each [low, high] interval as two scalars."""

from __future__ import annotations

import csv
from pathlib import Path

from sweetspot.tracking import Tracker


def test_csv_summary_holds_scalars_and_interval_bounds(tmp_path: Path) -> None:
    tracker = Tracker(backends=["csv"])
    tracker.start(tmp_path, "run", {})
    tracker.log_summary({"eval/reward_delta": 0.25, "eval/reward_delta_ci95": [0.1, 0.4],
                         "note": "text is not a metric", "eval/prompts": 120})
    tracker.finish()
    rows = list(csv.DictReader(open(next(tmp_path.glob("csv/**/metrics.csv")))))
    got = {k: float(v) for row in rows for k, v in row.items() if v not in ("", None)}
    assert got["eval/reward_delta"] == 0.25 and got["eval/prompts"] == 120
    assert (got["eval/reward_delta_ci95_low"], got["eval/reward_delta_ci95_high"]) == (0.1, 0.4)
    assert "note" not in got and "eval/reward_delta_ci95" not in got

"""A plain run's console: every line once, no dependency warnings or tips, the summary last.

One real CLI run (a subprocess: Hydra's logging set-up is part of what is tested) on the tiny
model with a fresh cache, so every stage that used to print dependency noise (sampling,
training, evaluation) really runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

SMALL = ("experiment=tiny", "logger=csv", "task.max_train=4", "task.max_heldout=2",
         "sampler.n=4", "sampler.max_new_tokens=8", "trainer.max_steps=1",
         "evaluation.max_new_tokens=8")
LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - |^(INFO|WARNING|ERROR): ")


def message_lines(output: str) -> list[str]:
    """The printed lines without their logging prefix (Hydra's ``[time][logger][LEVEL] - `` or
    Lightning's ``LEVEL: ``), so one message printed by two handlers counts twice. Progress-bar
    lines (redrawn with carriage returns) are left out."""
    lines = []
    for line in output.split("\n"):
        if "\r" in line or not line.strip():
            continue
        lines.append(LOG_PREFIX.sub("", line).strip())
    return lines


def test_message_lines_strip_both_prefixes() -> None:
    twice = ("INFO: GPU available: False\n"
             "[2026-01-01 00:00:00,000][lightning.pytorch][INFO] - GPU available: False\n"
             "bar:  50%|#  | 1/2\rbar: 100%|##| 2/2\n")
    assert Counter(message_lines(twice)) == {"GPU available: False": 2}


def test_tiny_run_prints_each_line_once_without_dependency_noise(tmp_path: Path) -> None:
    env = {**os.environ, "SWEETSPOT_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": ""}
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "sweetspot", *SMALL, f"hydra.run.dir={run}"],
                          env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    stages = json.loads((run / "stages.json").read_text())
    assert not any(stages[s]["reused"] for s in ("sample", "train", "answers_trained"))
    repeated = {line: n for line, n in Counter(message_lines(output)).items() if n > 1}
    assert not repeated, output
    for noise in ("Warning", "deprecated", "Tip:", "warnings.warn", "GPU available"):
        assert noise not in output, (noise, output)
    assert "sweetspot run finished" in done.stdout
    assert done.stdout.rstrip().endswith(f"run folder: {run}")

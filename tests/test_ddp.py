"""DDP on this CPU machine: 2 processes (gloo, strategy=ddp, devices=2, accelerator cpu) with
batch_size 2 each train exactly like 1 process with batch_size 4 on the same global batches.

Both runs go through ``python -m tests.train_worker`` in subprocesses (Lightning's DDP launcher
re-executes the module once per extra process). 23 pairs make the last global batch 3 pairs,
split 2 + 1: the loss scale keeps that step's loss and gradient the global batch's mean.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def train(out: Path, cache: Path, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.train_worker", "--out", str(out), "--cache", str(cache),
         "--pairs", "23", "--full", "--lr", "1e-3", *args],
        capture_output=True, text=True, timeout=150, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_two_ddp_processes_match_one_process(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    cache = tmp_path / "cache"
    one = train(tmp_path / "one", cache, "--batch-size", "4")
    two = train(tmp_path / "two", cache, "--batch-size", "2", "--devices", "2",
                "--strategy", "ddp")
    assert one["metrics"]["train/steps"] == two["metrics"]["train/steps"] == 6
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert one["losses"][0] == pytest.approx(0.693147, abs=1e-5)  # policy == reference
    a = load_file(tmp_path / "one" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "two" / "checkpoint" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=2e-5)

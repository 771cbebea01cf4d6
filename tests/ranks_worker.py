"""One rank of the stage-cache protocol test (``tests/test_ranks.py``), started by torchrun:

    torchrun --nproc_per_node 2 tests/ranks_worker.py --cache DIR --out DIR

Every rank joins the job (``distributed.setup``, real gloo), computes one sharded stage with the
others (each rank writes its shards, rank 0 assembles and commits), then reaches a rank-0 stage
that fails on rank 0. Each rank writes what it saw to ``OUT/rank<k>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHARDS = 5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from sweetspot.cache import StageCache, StageContext
    from sweetspot.distributed import setup

    ranks = setup()
    cache = StageCache(args.cache, ranks)

    def sharded(ctx: StageContext) -> dict:
        ctx.partial_dir.mkdir(parents=True, exist_ok=True)
        missing = [i for i in range(SHARDS) if not (ctx.partial_dir / f"{i}.txt").exists()]
        mine = ctx.ranks.split(missing if ctx.ranks.main else [])
        for i in mine:
            (ctx.partial_dir / f"{i}.txt").write_text(f"shard {i} by rank {ctx.ranks.rank}")
        shares = ctx.ranks.shares(len(mine))
        if not ctx.ranks.main:
            return {}
        lines = [(ctx.partial_dir / f"{i}.txt").read_text() for i in range(SHARDS)]
        (ctx.out_dir / "all.txt").write_text("\n".join(lines))
        return {"counts": shares}

    entry = cache.get_or_compute("demo", {"shards": SHARDS}, [], sharded, every_rank=True)
    seen = {
        "rank": ranks.rank,
        "world": ranks.world,
        "local_world": ranks.local_world,
        "entry": str(entry.path),
        "counts": entry.meta.get("counts"),
        "all": entry.file("all.txt").read_text(),
    }

    def fails(ctx: StageContext) -> dict:
        raise ValueError("no such column 'reward'")

    try:
        cache.get_or_compute("boom", {}, [], fails)
        seen["boom"] = "no error"
    except Exception as e:  # noqa: BLE001 - the test reads which error each rank got
        seen["boom"] = f"{type(e).__name__}: {e}"
    Path(args.out, f"rank{ranks.rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()

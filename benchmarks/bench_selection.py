"""Selection at scale: 1M prompts x 64 rewards, vectorised vs a plain per-prompt Python loop.

The vectorised strategies run on the full matrix through ``select_matrix`` (no frame building;
that is timed separately on a smaller table). The loop baseline runs on a subsample and is
extrapolated linearly to 1M prompts (it says so in the table).

Then the whole ``select`` (sweet_spot) on a responses frame of ``--frame-prompts`` prompts, as
the stages write it (grouped by prompt, ascending sample_id, one text per response): build the
matrix, select, build the pairs table. It is set against the NumPy core, ``select_matrix`` on the
same rewards as a bare matrix (the computation the stage cannot avoid), measured in the same
process, and against the loop baseline at that size. The first call (what a user pays: fresh
memory) and the second are both shown; wall-clock and CPU seconds, since a loaded machine
inflates the first. The frame is timed with each ``--text-bytes`` (default: a few-byte ``r<i>``
and ~226-byte texts, since text handling scales with the bytes it reads: the texts are compared
lazily, only for the pairs picked). ``--frame-only`` skips the 1M table.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd

from sweetspot.selection.margin import Margin
from sweetspot.selection.positions import Positions, Recipe
from sweetspot.selection.routing import Routing


def loop_positions(rewards: np.ndarray, kc: float, kr: float) -> list:
    """The naive implementation: one Python iteration (and a few NumPy calls) per prompt."""
    out = []
    for row in rewards:
        row = row[~np.isnan(row)]
        if len(row) < 2 or row.max() == row.min():
            out.append(None)
            continue
        mu, sigma = row.mean(), row.std()
        pick = [int(np.argmax(row)) if k == math.inf else int(np.argmin(row)) if k == -math.inf
                else int(np.argmin(np.abs(row - (mu + k * sigma)))) for k in (kc, kr)]
        out.append(pick if row[pick[0]] > row[pick[1]] else None)
    return out


def loop_recipe(rewards: np.ndarray, k: int = 5, seed: int = 0) -> list:
    out = []
    for i, row in enumerate(rewards):
        drawn = np.random.default_rng((seed, i)).choice(len(row), k, replace=False)
        out.append((int(np.argmax(row)), int(drawn[np.argmin(row[drawn])])))
    return out


def loop_margin(rewards: np.ndarray, keep: float = 0.1, m1: float = -2.0, count: int = 30) -> list:
    pairs = []
    for p, row in enumerate(rewards):
        pairs.append((float(np.max(row) - np.min(row)), p))
    m2 = sorted((m for m, _ in pairs), reverse=True)[count - 1]
    scored = [((min(max(m, m1), m2) - m1) / (m2 - m1), p) for m, p in pairs]
    return sorted(scored, reverse=True)[:math.ceil(keep * len(scored))]


def loop_routing(rewards: np.ndarray, threshold: float = 0.5) -> list:
    pairs = []
    for row in rewards:
        margin = float(np.max(row) - np.min(row))
        pairs.append((margin, "sft" if margin < threshold else "dpo"))
    return sorted(pairs, key=lambda pair: -pair[0])


def timed(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def timed_once(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def frame_overhead(rewards: np.ndarray, loop_prompts: int, repeat: int,
                   text_bytes: int = 0) -> None:
    """The whole ``select`` stage on a frame against its NumPy core and the loop baseline.
    ``text_bytes`` pads every response to about that length (0: ``r<i>``, a few bytes)."""
    n, width = rewards.shape
    pad = ("lorem ipsum dolor sit amet " * (text_bytes // 27 + 1))[:text_bytes]
    frame = pd.DataFrame({
        "prompt_id": np.repeat([f"p{i}" for i in range(n)], width),
        "sample_id": np.tile(np.arange(width), n),
        "response": [f"{pad}r{i}" for i in range(n * width)],
        "reward": rewards.ravel(),
    })
    strategy = Positions()
    first = timed_once(lambda: strategy.select(frame))
    second = timed_once(lambda: strategy.select(frame))
    core = min((timed_once(lambda: strategy.select_matrix(rewards)) for _ in range(repeat)),
               key=lambda t: t[0])
    sub = rewards[:min(loop_prompts, n)]
    loop = timed(lambda: loop_positions(sub, math.inf, -2.0), 1) * n / len(sub)
    print(f"\nWhole `select` (sweet_spot) on a {n:,}-prompt x {width} frame ({n * width:,} rows, "
          f"in matrix order, texts of {text_bytes + 2}+ bytes); core best of {repeat}; loop "
          f"timed on {len(sub):,} prompts\n")
    print("| | wall (s) | CPU (s) | x core (wall) | x core (CPU) |")
    print("|---|---:|---:|---:|---:|")
    rows = [("NumPy core: `select_matrix` on the reward matrix", core),
            ("whole `select`, first call", first), ("whole `select`, second call", second)]
    for name, (wall, cpu) in rows:
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {wall / core[0]:.1f}x | "
              f"{cpu / core[1]:.1f}x |")
    print(f"| Python loop baseline (extrapolated) | {loop:.1f} | | {loop / core[0]:.0f}x | |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=1_000_000)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--loop-prompts", type=int, default=20_000)
    parser.add_argument("--frame-prompts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frame-only", action="store_true",
                        help="only the whole-stage overhead on the frame")
    parser.add_argument("--text-bytes", type=int, nargs="+", default=[0, 224],
                        help="pad the frame's responses to about this many bytes (one table "
                             "per value)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    if args.frame_only:
        rewards = rng.normal(size=(args.frame_prompts, args.n))
        for text_bytes in args.text_bytes:
            frame_overhead(rewards, args.loop_prompts, args.repeat, text_bytes)
        return
    rewards = rng.normal(size=(args.prompts, args.n))
    sub = rewards[:args.loop_prompts]
    scale = args.prompts / args.loop_prompts
    cases = [
        ("sweet_spot (max / mu-2sigma)", Positions(),
         lambda: loop_positions(sub, math.inf, -2.0)),
        ("max_min", Positions(chosen="max", rejected="min"),
         lambda: loop_positions(sub, math.inf, -math.inf)),
        ("recipe (k = 5)", Recipe(), lambda: loop_recipe(sub)),
        ("margin (external, top 10%)", Margin(sources=["external"]), lambda: loop_margin(sub)),
        ("routing (external, curriculum)", Routing(curriculum=True), lambda: loop_routing(sub)),
    ]
    print(f"{args.prompts:,} prompts x {args.n} rewards (float64), best of {args.repeat}; "
          f"loop baseline timed on {args.loop_prompts:,} prompts and extrapolated x{scale:g}\n")
    print("| strategy | vectorised (s) | Python loop, extrapolated (s) | speed-up |")
    print("|---|---:|---:|---:|")
    for name, strategy, baseline in cases:
        vec = timed(lambda s=strategy: s.select_matrix(rewards), args.repeat)
        loop = timed(baseline, 1) * scale
        print(f"| {name} | {vec:.3f} | {loop:.1f} | {loop / vec:.0f}x |")

    for text_bytes in args.text_bytes:
        frame_overhead(rewards[:args.frame_prompts], args.loop_prompts, args.repeat, text_bytes)


if __name__ == "__main__":
    main()

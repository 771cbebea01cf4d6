"""Sweet-spot positions (Xiao et al., ACL 2025) and their scalable recipe.

Per prompt, mu and sigma are the population (ddof = 0) mean and standard deviation of its
scored rewards. A position ``mu+<k>sigma`` is filled by the response whose reward is nearest
mu + k * sigma; ``min``/``max`` by the extremes. Every tie goes to the lowest ``sample_id``.
A prompt gives no pair, counted by reason, when it has fewer than 2 scored responses, all its
rewards are equal (sigma = 0), all its texts are identical, or the two positions land on the same
response, on the same text, or on equal rewards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sweetspot.selection.common import (
    PairArrays,
    PairStrategy,
    degenerate_conditions,
    make_pairs,
    position_pair,
    position_pairs,
    row_stats,
)
from sweetspot.selection.matrix import ResponseMatrix
from sweetspot.validation import at_least, require

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass(kw_only=True)
class Positions(PairStrategy):
    """Two named positions; ``pair`` ("<chosen>/<rejected>", e.g. "max/mu-2sigma"), when set,
    replaces ``chosen`` and ``rejected`` so a sweep can name all 21 pairs in one list."""

    chosen: str = "max"
    rejected: str = "mu-2sigma"
    pair: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pair is not None:
            parts = str(self.pair).split("/")
            require(
                len(parts) == 2,
                "pair",
                f"must be '<chosen>/<rejected>' (e.g. max/mu-2sigma), got {self.pair!r}",
            )
            self.chosen, self.rejected = parts
        position_pair(self.chosen, self.rejected)

    def make_pairs(self, m: ResponseMatrix) -> PairArrays:
        return position_pairs(m, self.chosen, self.rejected, self.block_rows)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a cheap, well-mixed hash of uint64 arrays (wraps on overflow)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def random_keys(prompt_keys: np.ndarray, sample_ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform uint64 key per (prompt, sample_id, seed): the draw of a prompt does not depend
    on the other prompts, their order, or the width of the matrix."""
    base = mix64(prompt_keys.astype(np.uint64) ^ mix64(np.array([seed], np.uint64)))
    return mix64(base[:, None] + sample_ids.astype(np.uint64) * _GOLDEN)


def lowest_of_random(m: ResponseMatrix, k: int, seed: int, block_rows: int) -> np.ndarray:
    """Per prompt, the column of the lowest reward among ``k`` scored responses drawn without
    replacement (all of them when fewer than ``k`` are scored); ties -> lowest sample_id."""
    P, N = m.shape
    out = np.zeros(P, np.int64)
    keys_all, sids_all = m.keys(), m.all_sample_ids()
    for s in range(0, P, block_rows):
        sl = slice(s, min(s + block_rows, P))
        B = m.rewards[sl]
        keys = random_keys(keys_all[sl], sids_all[sl], seed)
        keys[np.isnan(B)] = np.iinfo(np.uint64).max
        if k < N:
            picked = np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1)
        else:
            picked = np.broadcast_to(np.arange(N), B.shape)
        rows = np.arange(B.shape[0])[:, None]
        vals = np.where(np.isnan(B[rows, picked]), np.inf, B[rows, picked])
        out[sl] = picked[rows[:, 0], vals.argmin(axis=1)]
    return out


@dataclass(kw_only=True)
class Recipe(PairStrategy):
    """Chosen = the best of all N; rejected = the worst of ``k`` random samples.

    Xiao et al.'s scalable stand-in for a low position: no mu or sigma is needed (with k = 5 the
    rejected sits near mu - 1.16 sigma for normal rewards). The draw is seeded by ``seed`` and
    the prompt id, so it is stable per prompt whatever else is in the table."""

    k: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("k", self.k, 1)
        at_least("seed", self.seed, 0)

    def make_pairs(self, m: ResponseMatrix) -> PairArrays:
        st = row_stats(m.rewards, [math.inf], self.block_rows)
        chosen = st.cols[0]
        rejected = lowest_of_random(m, self.k, self.seed, self.block_rows)
        conditions = degenerate_conditions(m, st, chosen, rejected)
        return make_pairs(m, np.arange(m.shape[0]), chosen, rejected, conditions,
                          ("max", f"min_of_{self.k}_random"),
                          {"reward_mu": st.mu, "reward_sigma": st.sigma})

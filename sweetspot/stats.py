"""Uncertainty for every comparison sweetspot reports.

Two kinds of interval:

* **Within a run: a paired bootstrap over prompts.** Trained and reference policies answer the
  same held-out prompts, so each prompt gives one paired observation (trained - reference reward,
  or a win in [0, 1] with ties 1/2). Prompts are the unit that was sampled from a population, so
  they are what is resampled, with replacement; a prompt answered ``n > 1`` times is first
  averaged within the prompt, so its samples move together. The interval is the percentile 95%
  interval of the statistic over ``resamples`` (default 10,000) draws from a seeded
  ``numpy.random.default_rng``. The draws are vectorised in chunks of rows of prompt indices; a
  chunked draw yields the same indices as one row at a time, so a slow loop can check it.
* **Across runs: a t interval over seed means.** ``k`` jobs that differ only in their seed give
  ``k`` estimates; ``mean +- t(0.975, k - 1) * sd / sqrt(k)`` is their 95% interval (undefined,
  NaN, for one seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
_CHUNK_CELLS = 4_000_000  # indices drawn per chunk (32 MB of int64), whatever the prompt count


@dataclass(frozen=True)
class Interval:
    """A point estimate and its ``level`` interval (``low``/``high`` NaN when undefined)."""

    estimate: float
    low: float
    high: float
    n: int  # units the interval is over: prompts (bootstrap) or seeds (t interval)

    def bounds(self) -> list[float]:
        """``[low, high]``, the form metrics.json stores."""
        return [self.low, self.high]


def per_prompt_mean(values: np.ndarray, prompt_ids: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Average ``values`` within each prompt; returns (prompt ids sorted as strings, means).

    Samples of one prompt are not independent observations; averaging them first makes the
    prompt the bootstrap's unit. The sorted order makes the interval a function of the
    (prompt, value) pairs alone: the same answers in another row order (another shard layout,
    answers returned in length order) give the same interval.
    """
    values = np.asarray(values, dtype=float)
    ids = np.asarray(prompt_ids, dtype=object)
    if values.shape != ids.shape:
        raise ValueError(f"{values.shape[0]} values but {ids.shape[0]} prompt ids")
    uniq, first, inverse = np.unique(ids.astype(str), return_index=True, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(uniq))
    counts = np.bincount(inverse, minlength=len(uniq))
    return ids[first], sums / counts


def bootstrap(
    columns: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Percentile bootstrap of ``statistic`` over units (rows of every column, resampled together).

    ``statistic`` receives each column indexed by a ``(chunk, units)`` array of unit indices,
    i.e. arrays of shape ``(chunk, units)``, and returns one value per row; called with shape
    ``(1, units)`` on the data as they are it gives the point estimate. Ratios such as "met
    constraints / all constraints" are therefore resampled as a ratio, not as a mean of ratios.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    cols = [np.asarray(c, dtype=float) for c in columns]
    units = len(cols[0])
    if units == 0 or any(len(c) != units for c in cols):
        lengths = [len(c) for c in cols]
        raise ValueError(f"columns must be non-empty and of one length, got {lengths}")
    estimate = float(np.asarray(statistic(*[c[None, :] for c in cols]))[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // units)
    stats = np.empty(resamples)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        idx = rng.integers(0, units, size=(rows, units))
        stats[start : start + rows] = statistic(*[c[idx] for c in cols])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    # A constant statistic gives a zero-width interval; float rounding in the resampled means
    # must not make it look like a (tiny) interval that excludes the estimate.
    if np.ptp(stats) <= 1e-12 * max(1.0, abs(estimate)):
        low = high = estimate
    return Interval(estimate, float(low), float(high), units)


def _mean_rows(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1)


def paired_mean(
    values: np.ndarray,
    prompt_ids: Sequence,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Mean over prompts of a per-response value (averaged within prompt first), with its CI."""
    _, means = per_prompt_mean(values, prompt_ids)
    return bootstrap([means], _mean_rows, resamples=resamples, seed=seed, level=level)


def reward_delta(
    trained: np.ndarray,
    reference: np.ndarray,
    prompt_ids: Sequence,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Mean reward of trained minus reference on paired answers, paired bootstrap over prompts."""
    delta = np.asarray(trained, dtype=float) - np.asarray(reference, dtype=float)
    return paired_mean(delta, prompt_ids, resamples=resamples, seed=seed, level=level)


def win_rate(
    trained: np.ndarray,
    reference: np.ndarray,
    prompt_ids: Sequence,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Share of paired answers where trained beats reference (ties count 1/2), with its CI."""
    t, r = np.asarray(trained, dtype=float), np.asarray(reference, dtype=float)
    wins = (t > r) + 0.5 * (t == r)
    return paired_mean(wins, prompt_ids, resamples=resamples, seed=seed, level=level)


def seed_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """t interval of the mean of per-seed estimates (NaN bounds for fewer than two seeds).

    Seeds are few (3-5), so the t quantile, not 1.96, sets the width.
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if v.size < 2:
        return Interval(mean, math.nan, math.nan, 1)
    from scipy.stats import t  # scipy comes with cvxpy

    half = float(t.ppf(0.5 + level / 2, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return Interval(mean, mean - half, mean + half, int(v.size))


def arm_difference(
    arm_a: Sequence[np.ndarray],
    arm_b: Sequence[np.ndarray],
    prompt_ids: Sequence,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[Interval, Interval]:
    """Two strategies compared on the same held-out prompts: mean of A - B, two ways.

    ``arm_a[k]`` and ``arm_b[k]`` are the per-answer rewards of the two arms' policies trained
    with seed ``k`` (answers aligned on ``prompt_ids``). Returns (paired bootstrap over prompts
    of the seed-averaged difference, t interval over the seeds' mean differences): the first
    says whether these prompts tell the arms apart, the second whether training noise does.
    """
    if len(arm_a) != len(arm_b) or not arm_a:
        raise ValueError(f"both arms need the same seeds, got {len(arm_a)} and {len(arm_b)}")
    diffs = np.stack([np.asarray(a, float) - np.asarray(b, float)
                      for a, b in zip(arm_a, arm_b, strict=True)])
    prompts = paired_mean(diffs.mean(axis=0), prompt_ids, resamples=resamples, seed=seed,
                          level=level)
    return prompts, seed_interval([float(d.mean()) for d in diffs], level=level)

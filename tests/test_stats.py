"""Paired bootstrap and seed intervals, checked against computations written differently."""

from __future__ import annotations

import json
import math
import random
import statistics

import numpy as np
import pandas as pd
import pytest

from sweetspot import stats
from sweetspot.evaluation.evaluate import compare


def slow_bootstrap_mean(per_prompt: list[float], resamples: int, seed: int) -> tuple[float, float]:
    """One resample at a time in plain Python, the same RNG draws, then a hand-made percentile."""
    rng = np.random.default_rng(seed)
    n = len(per_prompt)
    means = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        means.append(sum(per_prompt[i] for i in idx) / n)
    means.sort()

    def pct(q: float) -> float:  # linear interpolation between order statistics (numpy's default)
        pos = q / 100 * (len(means) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(means) - 1)
        return means[lo] + (pos - lo) * (means[hi] - means[lo])

    return pct(2.5), pct(97.5)


def test_reward_delta_matches_a_python_loop_with_samples_averaged_per_prompt() -> None:
    rnd = random.Random(1)
    prompts = [f"p{i}" for i in range(23)]
    rows = [(p, rnd.random(), rnd.random()) for p in prompts for _ in range(3)]  # n = 3 per prompt
    rnd.shuffle(rows)  # samples of a prompt need not be adjacent
    ids, trained, reference = zip(*rows, strict=True)
    got = stats.reward_delta(np.array(trained), np.array(reference), list(ids),
                             resamples=2000, seed=7)
    # per-prompt mean delta, prompts sorted by id (the order the bootstrap indexes)
    sums, counts = {}, {}
    for p, t, r in rows:
        sums[p] = sums.get(p, 0.0) + (t - r)
        counts[p] = counts.get(p, 0) + 1
    per_prompt = [sums[p] / counts[p] for p in sorted(sums)]
    low, high = slow_bootstrap_mean(per_prompt, 2000, 7)
    assert got.estimate == pytest.approx(statistics.fmean(t - r for _, t, r in rows))
    assert got.low == pytest.approx(low, abs=1e-12) and got.high == pytest.approx(high, abs=1e-12)
    assert got.n == 23


def test_the_interval_does_not_depend_on_row_order() -> None:
    rnd = random.Random(4)
    rows = [(f"q{i}", rnd.random(), rnd.random()) for i in range(30) for _ in range(2)]
    intervals = []
    for _ in range(3):
        rnd.shuffle(rows)
        ids, trained, reference = zip(*rows, strict=True)
        got = stats.reward_delta(np.array(trained), np.array(reference), list(ids),
                                 resamples=500, seed=2)
        intervals.append((round(got.estimate, 12), got.low, got.high))
    assert intervals[0] == intervals[1] == intervals[2]


def test_chunked_draws_equal_one_big_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(0).normal(size=50)
    whole = stats.bootstrap([values], lambda x: x.mean(axis=1), resamples=999, seed=3)
    monkeypatch.setattr(stats, "_CHUNK_CELLS", 50 * 7)  # 7 resamples per chunk, last one short
    chunked = stats.bootstrap([values], lambda x: x.mean(axis=1), resamples=999, seed=3)
    assert (whole.low, whole.high) == (chunked.low, chunked.high)


def test_bootstrap_interval_agrees_with_the_normal_approximation() -> None:
    deltas = np.random.default_rng(5).normal(0.07, 0.4, size=3000)
    got = stats.reward_delta(deltas, np.zeros_like(deltas), np.arange(3000), seed=1)
    se = statistics.stdev(deltas.tolist()) / math.sqrt(len(deltas))
    mean = statistics.fmean(deltas.tolist())
    assert got.low == pytest.approx(mean - 1.959964 * se, abs=0.08 * se * 2)
    assert got.high == pytest.approx(mean + 1.959964 * se, abs=0.08 * se * 2)


def test_win_rate_counts_ties_as_half_and_its_interval_covers_it() -> None:
    trained = np.array([1.0, 0.5, 0.2, 0.9, 0.3, 0.3])
    reference = np.array([0.0, 0.5, 0.4, 0.1, 0.3, 0.8])
    got = stats.win_rate(trained, reference, ["a", "b", "c", "d", "e", "f"], resamples=500)
    assert got.estimate == pytest.approx((1 + 0.5 + 0 + 1 + 0.5 + 0) / 6)
    assert 0 <= got.low <= got.estimate <= got.high <= 1


@pytest.mark.parametrize("case", ["one_prompt", "equal_deltas"])
def test_degenerate_samples_give_a_zero_width_interval(case: str) -> None:
    if case == "one_prompt":
        ids, trained, reference = ["x"] * 4, np.array([0.3, 0.1, 0.7, 0.2]), np.zeros(4)
        expected = 0.325
    else:
        ids, trained = list(range(40)), np.full(40, 0.7)
        reference, expected = np.full(40, 0.6), 0.1
    got = stats.reward_delta(trained, reference, ids, resamples=300)
    assert got.low == got.high == got.estimate == pytest.approx(expected)


def test_generic_statistic_resamples_a_ratio_as_a_ratio() -> None:
    met = np.array([1.0, 0.0, 3.0, 2.0])
    total = np.array([1.0, 2.0, 3.0, 4.0])
    got = stats.bootstrap([met, total], lambda m, t: m.sum(axis=1) / t.sum(axis=1), resamples=400)
    assert got.estimate == pytest.approx(6 / 10)  # not the mean of the ratios (0.625)
    assert got.low < got.estimate < got.high


def test_seed_interval_is_the_t_interval() -> None:
    values = [0.52, 0.61, 0.47]
    got = stats.seed_interval(values)
    half = 4.302652729911275 * statistics.stdev(values) / math.sqrt(3)  # t(0.975, df=2)
    assert got.estimate == pytest.approx(statistics.fmean(values))
    assert got.low == pytest.approx(got.estimate - half) and got.high == pytest.approx(
        got.estimate + half)
    one = stats.seed_interval([0.5])
    assert one.estimate == 0.5 and math.isnan(one.low) and one.n == 1


def answers(rewards: list[float], detail: list[dict], strict: bool) -> pd.DataFrame:
    table = pd.DataFrame({
        "prompt_id": [f"p{i}" for i in range(len(rewards))],
        "sample_id": 0,
        "score/rules": rewards,
        "rules/detail": [json.dumps(d) for d in detail],
        "rules/passed": [sum(v == 1.0 for v in d.values()) / len(d) for d in detail],
        "num_tokens": 10,
    })
    if strict:
        table["rules/strict"] = [float(all(v == 1.0 for v in d.values())) for d in detail]
    return table


@pytest.mark.parametrize("strict_column", [True, False])
def test_compare_reports_deltas_intervals_and_strict_accuracy(strict_column: bool) -> None:
    detail_t = [{"a": 1.0, "b": 1.0}, {"a": 0.5}, {"a": 1.0, "b": 0.0, "c": 1.0}]
    detail_r = [{"a": 0.0, "b": 1.0}, {"a": 1.0}, {"a": 0.2, "b": 0.0, "c": 0.9}]
    trained = answers([1.0, 0.5, 2 / 3], detail_t, strict_column)
    reference = answers([0.5, 1.0, 0.4], detail_r, strict_column)
    m = compare(trained, reference, "score/rules", "rules/detail", resamples=300)
    assert m["eval/reward_delta"] == pytest.approx((0.5 - 0.5 + (2 / 3 - 0.4)) / 3)
    low, high = m["eval/reward_delta_ci95"]
    assert low <= m["eval/reward_delta"] <= high
    assert len(m["eval/win_rate_ci95"]) == 2
    assert m["eval/strict_accuracy/trained"] == pytest.approx(1 / 3)  # only the first meets all
    assert m["eval/strict_accuracy/reference"] == pytest.approx(1 / 3)  # only the second
    assert m["eval/strict_accuracy_instruction/trained"] == pytest.approx(4 / 6)
    assert m["eval/strict_accuracy_instruction/reference"] == pytest.approx(2 / 6)
    json.dumps(m)  # metrics.json must hold it


def test_compare_leaves_out_strict_keys_for_a_scorer_without_them() -> None:
    trained = pd.DataFrame({"prompt_id": ["a", "b"], "sample_id": 0, "score/rm": [0.2, 0.9],
                            "num_tokens": 5})
    reference = trained.assign(**{"score/rm": [0.1, 0.9]})
    m = compare(trained, reference, "score/rm", "rm/detail", resamples=100)
    assert not any(k.startswith("eval/strict_accuracy") for k in m)
    assert m["eval/win_rate"] == pytest.approx(0.75)


def test_arm_difference_averages_seeds_then_resamples_prompts() -> None:
    rng = np.random.default_rng(3)
    ids = np.repeat([f"p{i}" for i in range(40)], 1)
    a = [rng.normal(0.6, 0.1, 40) for _ in range(3)]
    b = [rng.normal(0.5, 0.1, 40) for _ in range(3)]
    prompts, seeds = stats.arm_difference(a, b, ids, resamples=2000, seed=1)
    # independent: per-prompt differences averaged over seeds, resampled with the same draws
    d = np.mean([x - y for x, y in zip(a, b, strict=True)], axis=0)
    d = d[sorted(range(40), key=lambda i: ids[i])]  # the bootstrap indexes prompts sorted by id
    draws = np.random.default_rng(1).integers(0, 40, size=(2000, 40))
    expected = np.percentile(d[draws].mean(axis=1), [2.5, 97.5])
    assert prompts.estimate == pytest.approx(d.mean())
    assert [prompts.low, prompts.high] == pytest.approx(list(expected))
    per_seed = [float((x - y).mean()) for x, y in zip(a, b, strict=True)]
    half = 4.302652729911275 * np.std(per_seed, ddof=1) / np.sqrt(3)  # t(0.975, 2), tabled
    assert [seeds.low, seeds.high] == pytest.approx([np.mean(per_seed) - half,
                                                     np.mean(per_seed) + half])
    with pytest.raises(ValueError, match="same seeds"):
        stats.arm_difference(a, b[:2], ids)

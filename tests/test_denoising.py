"""Denoising: robust PCA solvers on synthetic Bradley-Terry matrices, and the table interface."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from sweetspot.config import build_node, validate
from sweetspot.denoising.none import NoDenoiser
from sweetspot.denoising.rpca import RPCADenoiser, flip_pairs, hide_pairs
from sweetspot.denoising.solvers import solve_alm, solve_cvxpy
from sweetspot.errors import ConfigError, DataError
from sweetspot.pipeline import run_pipeline


def bt_batch(B: int, n: int, rate: float, keep: float, seed: int):
    """Skew-symmetric rank-2 logits s_i - s_j with a known fraction of pairs flipped."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((B, n))
    clean = s[:, :, None] - s[:, None, :]
    M, mask, flips = np.empty_like(clean), np.empty(clean.shape, bool), np.empty(clean.shape, bool)
    for b in range(B):
        mask[b] = hide_pairs(np.ones((n, n), bool), keep, rng)
        M[b], flips[b] = flip_pairs(np.where(mask[b], clean[b], 0.0), mask[b], rate, rng)
    return s, M, mask, flips


def taus(s: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.array([kendalltau(a, b).statistic for a, b in zip(s, scores, strict=True)])


def borda(M: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row means of the observed off-diagonal logits: the ranking without denoising."""
    observed = mask & ~np.eye(M.shape[-1], dtype=bool)
    return np.where(observed, M, 0.0).sum(-1) / observed.sum(-1)


@pytest.mark.parametrize("rate, keep", [(0.05, 1.0), (0.10, 1.0), (0.05, 0.8)])
def test_both_solvers_recover_the_ranking(rate, keep):
    n = 32
    s, M, mask, _ = bt_batch(4, n, rate, keep, seed=int(rate * 100 + keep * 10))
    noisy = taus(s, borda(M, mask)).mean()
    L_alm, _, info = solve_alm(M, mask, 1 / np.sqrt(n))
    assert info["converged"].all()
    L_ref, _, _ = solve_cvxpy(M[:2], mask[:2], 1 / np.sqrt(n))
    for L, truth in ((L_alm, s), (L_ref, s[:2])):
        tau = taus(truth, L.mean(-1)).mean()
        assert tau >= 0.98
        assert tau > noisy + 0.04


def test_alm_agrees_with_cvxpy_on_random_instances():
    rng = np.random.default_rng(7)
    for n, rate, keep in ((12, 0.1, 1.0), (20, 0.15, 0.7), (24, 0.3, 0.9)):
        _, M, mask, _ = bt_batch(2, n, rate, keep, seed=n)
        lam = rng.uniform(0.5, 2.0) / np.sqrt(n)
        L, S, alm = solve_alm(M, mask, lam)
        L_ref, S_ref, ref = solve_cvxpy(M, mask, lam)
        # objective recomputed here, independently of solvers.objective
        nuclear = np.array([np.linalg.norm(x, "nuc") for x in L])
        assert np.allclose(alm["objective"], nuclear + lam * np.abs(S[mask]).reshape(2, -1).sum(1))
        assert np.all(np.abs(alm["objective"] - ref["objective"]) <= 1e-3 * ref["objective"])
        assert np.abs(L - L_ref).max() <= 0.05 * np.abs(M).max()
        # feasible (L = M, S = 0 is feasible, so the optimum is no worse than ||M||_*)
        assert np.all(alm["residual"] <= 1e-4)
        assert np.all(alm["objective"] <= [np.linalg.norm(x, "nuc") for x in M])


def test_alm_batch_equals_one_at_a_time_and_handles_zero_instances():
    _, M, mask, _ = bt_batch(3, 10, 0.1, 0.9, seed=1)
    M[1] = 0.0
    L, S, info = solve_alm(M, mask, 0.3, chunk_size=2)
    assert info["converged"].all() and np.all(L[1] == 0) and np.all(S[1] == 0)
    L0, _, _ = solve_alm(M[2:], mask[2:], 0.3)
    assert np.allclose(L[2], L0[0])


def frame(sizes: dict[str, int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(p, k, float(rng.standard_normal())) for p, n in sizes.items() for k in range(n)]
    return pd.DataFrame(rows, columns=["prompt_id", "sample_id", "reward"])


def test_corrupt_flips_exactly_the_requested_count_seeded():
    df = frame({"a": 8, "b": 13, "c": 20})
    result = RPCADenoiser(corrupt=0.2, seed=3).denoise(df)
    expected = sum(round(0.2 * n * (n - 1) / 2) for n in (8, 13, 20))
    table = result.comparisons
    assert result.metrics["comparisons_flipped"] == table["flipped"].sum() == expected
    assert result.metrics["comparisons_observed"] == sum(n * (n - 1) // 2 for n in (8, 13, 20))
    # a flipped row carries 1 - sigmoid(r_i - r_j), an intact one sigmoid(r_i - r_j)
    r = df.set_index(["prompt_id", "sample_id"])["reward"]
    gap = (r.loc[list(zip(table.prompt_id, table.i, strict=True))].to_numpy()
           - r.loc[list(zip(table.prompt_id, table.j, strict=True))].to_numpy())
    clean_p = 1 / (1 + np.exp(-gap))
    assert np.allclose(table["p"], np.where(table["flipped"], 1 - clean_p, clean_p))
    again = RPCADenoiser(corrupt=0.2, seed=3).denoise(df).comparisons["flipped"]
    other = RPCADenoiser(corrupt=0.2, seed=4).denoise(df).comparisons["flipped"]
    assert again.equals(table["flipped"]) and not other.equals(table["flipped"])


def test_none_is_identity():
    df = frame({"a": 5, "b": 3})
    comparisons = pd.DataFrame({"prompt_id": ["a"], "i": [0], "j": [1], "p": [1.0]})
    result = NoDenoiser().denoise(df, comparisons)
    assert result.responses["reward_denoised"].equals(df["reward"])
    assert not result.comparisons["corrupted"].any() and not result.comparisons["flipped"].any()
    assert result.metrics["kendall_tau_denoised"] == 1.0


def test_rewards_frame_end_to_end():
    df = frame({"a": 24, "b": 32, "c": 32, "lonely": 1})
    df.loc[3, "reward"] = np.nan
    clean = RPCADenoiser().denoise(df)
    out = clean.responses
    assert clean.skipped == {"responses_without_reward": 1, "prompts_fewer_than_two_responses": 1}
    ok = out["prompt_id"].ne("lonely") & out["reward"].notna()
    # nothing corrupted: reward_denoised reproduces the rewards (centre + temperature * row mean)
    assert np.allclose(out.loc[ok, "reward_denoised"], out.loc[ok, "reward"], atol=1e-4)
    assert out.loc[~ok, "reward_denoised"].isna().all()
    assert clean.metrics["comparisons_flagged"] == 0

    noisy = RPCADenoiser(corrupt=0.05, temperature=2.0, seed=1).denoise(df).metrics
    assert noisy["kendall_tau_denoised"] > noisy["kendall_tau_noisy"]
    assert noisy["flag_precision"] > 0.9 and noisy["flag_recall"] > 0.9
    # the ranking the metric reports equals a direct computation
    result = RPCADenoiser(corrupt=0.05, temperature=2.0, seed=1).denoise(df)
    per_prompt = [kendalltau(g["reward"], g["reward_denoised"], nan_policy="omit").statistic
                  for p, g in result.responses.groupby("prompt_id") if p != "lonely"]
    assert result.metrics["kendall_tau_denoised"] == pytest.approx(np.mean(per_prompt))


def test_comparisons_source_with_missing_pairs():
    df = frame({"a": 32, "b": 24}, seed=2)
    rng = np.random.default_rng(5)
    rows = []
    for p, g in df.groupby("prompt_id"):
        r = g.set_index("sample_id")["reward"]
        for i in r.index:
            for j in r.index:
                if i < j and rng.random() < 0.85:
                    a, b = (i, j) if rng.random() < 0.5 else (j, i)  # both orientations occur
                    rows.append((p, a, b, 1 / (1 + np.exp(-(r[a] - r[b])))))
    comparisons = pd.DataFrame(rows, columns=["prompt_id", "i", "j", "p"])
    den = RPCADenoiser(source="comparisons", corrupt=0.05, seed=2)
    result = den.denoise(df, comparisons)
    assert len(result.comparisons) == len(comparisons)
    assert result.metrics["kendall_tau_denoised"] > result.metrics["kendall_tau_noisy"]
    assert result.metrics["kendall_tau_denoised"] > 0.95
    flipped = result.comparisons["flipped"].to_numpy()
    assert np.allclose(result.comparisons["p"], np.where(flipped, 1 - comparisons["p"],
                                                          comparisons["p"]))
    with pytest.raises(DataError, match="comparisons"):
        den.denoise(df)
    bad = comparisons.assign(p=comparisons["p"].where(comparisons.index != 4, 1.5))
    with pytest.raises(DataError) as error:
        den.denoise(df, bad)
    assert error.value.line == 5 and error.value.field == "p"


def test_auto_source_picks_the_comparisons_only_when_the_data_have_them_and_no_scores():
    """``source: auto`` on a rewards-only frame is ``rewards`` bit for bit (corrupted, so RPCA
    does work); with a comparisons column it is ``comparisons`` unless the data have scores."""
    df = frame({"a": 12, "b": 9}, seed=4)
    auto = RPCADenoiser(corrupt=0.1, seed=1).denoise(df)
    rewards = RPCADenoiser(source="rewards", corrupt=0.1, seed=1).denoise(df)
    assert auto.metrics["source_comparisons"] == rewards.metrics["source_comparisons"] == 0
    pd.testing.assert_frame_equal(auto.responses, rewards.responses)
    pd.testing.assert_frame_equal(auto.comparisons, rewards.comparisons)

    # the offline reader's column: response i's row lists [j, p] for each comparison (i, j, p)
    table = pd.DataFrame({"prompt_id": ["q"] * 3, "sample_id": [0, 1, 2],
                          "reward": [np.nan] * 3,
                          "comparisons": [[[1.0, 1.0], [2.0, 1.0]], [[2.0, 1.0]], []]})
    listed = RPCADenoiser().denoise(table)
    assert listed.metrics["source_comparisons"] == 1
    pairs = zip(listed.comparisons["i"], listed.comparisons["j"], strict=True)
    assert sorted(pairs) == [(0, 1), (0, 2), (1, 2)]
    order = listed.responses.sort_values("reward_denoised", ascending=False)["sample_id"]
    assert list(order) == [0, 1, 2]  # 0 beats both, 1 beats 2
    scored = table.assign(score=[3.0, 1.0, 2.0], reward=[3.0, 1.0, 2.0])
    assert RPCADenoiser().resolved_source(scored, None) == "rewards"
    assert RPCADenoiser(source="comparisons").resolved_source(scored, None) == "comparisons"


def test_auto_source_on_a_built_in_task_equals_rewards(make_cfg, tmp_path: Path) -> None:
    """``denoiser=rpca`` on the built-in task (tiny model, rules rewards, no comparisons): the
    default ``auto`` runs on the rewards, giving what ``source=rewards`` gives exactly, and on
    this clean, complete data that is the reward itself."""
    base = ("experiment=tiny", "logger=none", "task.max_train=4", "until=select",
            "sampler.n=4", "sampler.max_new_tokens=8", "denoiser=rpca")
    auto = run_pipeline(make_cfg(*base), tmp_path / "auto")
    forced = run_pipeline(make_cfg(*base, "denoiser.source=rewards"), tmp_path / "rewards")
    assert auto["denoise/source_comparisons"] == forced["denoise/source_comparisons"] == 0
    a = pd.read_parquet(tmp_path / "auto" / "responses.parquet")
    b = pd.read_parquet(tmp_path / "rewards" / "responses.parquet")
    assert "comparisons" not in a.columns and a["reward"].notna().sum() >= 8
    pd.testing.assert_frame_equal(a, b)
    live = a["reward"].notna().to_numpy()
    assert (a["reward_denoised"].to_numpy()[live] == a["reward"].to_numpy()[live]).all()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "auto" / "pairs.parquet"),
                                  pd.read_parquet(tmp_path / "rewards" / "pairs.parquet"))


def test_config_nodes_match_the_classes_and_validate(make_cfg):
    """Each conf/denoiser option, composed over its schema as the pipeline composes it, holds
    exactly its class's fields (each at the class's default) and _target_, and builds that
    class; a bad value fails validation naming the field, built directly or composed."""
    for name, cls in (("none", NoDenoiser), ("rpca", RPCADenoiser)):
        node = make_cfg(f"denoiser={name}").denoiser
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        assert node._target_ == f"{cls.__module__}.{cls.__qualname__}"
        assert set(node) - {"_target_"} == set(fields)
        assert all(node[k] == v for k, v in fields.items())
        assert type(build_node(node, "denoiser")) is cls
    for field, value in (("corrupt", 1.5), ("solver", "admm"), ("observe_fraction", 0.0),
                         ("mu_growth", 0.9), ("lam", -1.0)):
        with pytest.raises(ConfigError) as error:
            RPCADenoiser(**{field: value})
        assert error.value.field == field
        with pytest.raises(ConfigError) as error:
            validate(make_cfg("denoiser=rpca", f"denoiser.{field}={value}"))
        assert error.value.field == f"denoiser.{field}"

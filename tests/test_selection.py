"""Every selection strategy against a plain per-prompt Python loop written here, on small inputs."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweetspot.config import build_node
from sweetspot.errors import ConfigError, DataError
from sweetspot.selection.augment import AugmentOptions
from sweetspot.selection.base import PAIR_COLUMNS
from sweetspot.selection.common import PairArrays, parse_position
from sweetspot.selection.margin import Margin, clipped_probability, fuse, search_upper
from sweetspot.selection.matrix import ResponseMatrix, build_matrix
from sweetspot.selection.positions import Positions, Recipe, random_keys
from sweetspot.selection.routing import Routing

CONF = Path(__file__).resolve().parents[1] / "conf" / "selection"


def frame(prompts: dict[str, list], texts: dict[str, list[str]] | None = None,
          sample_ids: dict[str, list[int]] | None = None, **extra: dict[str, list]) -> pd.DataFrame:
    """Rows from {prompt: [reward, ...]}; texts default to distinct; rows are shuffled so that no
    code path can rely on the input order."""
    rows = []
    for pid, rewards in prompts.items():
        for j, reward in enumerate(rewards):
            sid = sample_ids[pid][j] if sample_ids else j
            text = texts[pid][j] if texts and pid in texts else f"{pid}/{sid}"
            row = dict(prompt_id=pid, sample_id=sid, response=text, reward=reward)
            row.update({k: v[pid][j] for k, v in extra.items()})
            rows.append(row)
    df = pd.DataFrame(rows)
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


# ----------------------------------------------------------------- the independent reference
def ref_stats(items: list[tuple[int, float, str]]) -> tuple[float, float]:
    rewards = [r for _, r, _ in items]
    mu = math.fsum(rewards) / len(rewards)
    return mu, math.sqrt(math.fsum((r - mu) ** 2 for r in rewards) / len(rewards))


def ref_pick(items: list[tuple[int, float, str]], position: str) -> tuple[int, float, str]:
    """items are (sample_id, reward, text); ties go to the lowest sample_id."""
    if position == "max":
        return min(items, key=lambda it: (-it[1], it[0]))
    if position == "min":
        return min(items, key=lambda it: (it[1], it[0]))
    mu, sigma = ref_stats(items)
    k = 0.0
    if position != "mu":                                  # mu+<k>sigma / mu-<k>sigma
        body = position[3:-len("sigma")]
        k = (1.0 if position[2] == "+" else -1.0) * (float(body) if body else 1.0)
    target = mu + k * sigma
    return min(items, key=lambda it: (abs(it[1] - target), it[0]))


def scored_items(df: pd.DataFrame) -> dict[str, list[tuple[int, float, str]]]:
    out: dict[str, list] = {}
    for row in df.itertuples():
        out.setdefault(row.prompt_id, [])
        if not math.isnan(row.reward):
            out[row.prompt_id].append((row.sample_id, row.reward, row.response))
    return out


def ref_degenerate(items, chosen, rejected) -> str | None:
    if len(items) < 2:
        return "too_few_responses"
    if max(r for _, r, _ in items) == min(r for _, r, _ in items):
        return "zero_sigma"
    if len({t for _, _, t in items}) < 2:
        return "identical_texts"
    if chosen[0] == rejected[0]:
        return "same_response"
    if chosen[2] == rejected[2]:
        return "same_text"
    if not chosen[1] > rejected[1]:
        return "zero_margin"
    return None


def ref_positions(df: pd.DataFrame, chosen: str, rejected: str):
    pairs, skipped = {}, Counter()
    for pid, items in scored_items(df).items():
        c = ref_pick(items, chosen) if len(items) else None
        r = ref_pick(items, rejected) if len(items) else None
        reason = ref_degenerate(items, c, r)
        if reason:
            skipped[reason] += 1
        else:
            pairs[pid] = (c[0], r[0], c[1], r[1])
    return pairs, dict(skipped)


def as_dict(pairs: pd.DataFrame) -> dict:
    return {row.prompt_id: (row.chosen_sample_id, row.rejected_sample_id, row.chosen_reward,
                            row.rejected_reward) for row in pairs.itertuples()}


# ------------------------------------------------------------------------------- the fixtures
HAND = {
    "plain": [0.1, 0.5, 0.9, 0.3, 0.7, 0.2],
    "ties_max": [5.0, 2.0, 5.0, 1.0, 3.0],       # max tied: lowest sample_id wins
    "sigma0": [2.0, 2.0, 2.0],
    "n2": [1.0, 3.0],
    "n1": [4.0],
    "nan": [np.nan, 1.0, np.nan, 2.0, 0.0, 6.0],
    "all_nan": [np.nan, np.nan],
    "dup_texts": [1.0, 2.0, 3.0],
    "same_text_pair": [9.0, 5.0, 1.0],
    "zero_margin": [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
}
HAND_TEXTS = {"dup_texts": ["x", "x", "x"], "same_text_pair": ["a", "b", "a"]}


@pytest.mark.parametrize("chosen,rejected", [
    ("max", "mu-2sigma"), ("max", "min"), ("mu+1sigma", "mu-1sigma"), ("max", "mu"),
    ("mu+0.5sigma", "mu-0.5sigma"), ("mu", "min"), ("mu+2sigma", "mu-sigma"),
])
def test_positions_match_reference_loop(chosen, rejected):
    df = frame(HAND, HAND_TEXTS)
    res = Positions(chosen=chosen, rejected=rejected).select(df)
    pairs, skipped = ref_positions(df, chosen, rejected)
    assert as_dict(res.pairs) == pairs
    assert res.skipped == skipped
    assert len(res.pairs) + sum(res.skipped.values()) == len(HAND)
    assert set(PAIR_COLUMNS) <= set(res.pairs.columns)
    assert res.metrics["unscored_responses"] == 4


def test_positions_hand_values():
    res = Positions(chosen="max", rejected="min").select(frame(HAND, HAND_TEXTS))
    got = as_dict(res.pairs)
    assert got["ties_max"] == (0, 3, 5.0, 1.0)          # sample 0 and 2 tie at 5: 0 wins
    assert got["n2"] == (1, 0, 3.0, 1.0)
    assert got["nan"] == (5, 4, 6.0, 0.0)
    assert "same_text_pair" not in got         # max (sample 0) and min (sample 2): same text
    assert res.skipped == {"too_few_responses": 2, "zero_sigma": 1, "identical_texts": 1,
                           "same_text": 1}
    # mu of [1, 3] is 2, equidistant from both: the lowest sample_id (reward 1) fills it
    res = Positions(chosen="max", rejected="mu").select(frame({"n2": [1.0, 3.0]}))
    assert as_dict(res.pairs) == {"n2": (1, 0, 3.0, 1.0)}
    res = Positions(chosen="max", rejected="mu").select(frame({"n2": [3.0, 1.0]}))
    assert res.skipped == {"same_response": 1}


def test_positions_random_floats_match_reference():
    rng = np.random.default_rng(1)
    prompts = {f"p{i}": list(rng.normal(size=rng.integers(1, 12))) for i in range(300)}
    for p in list(prompts)[:40]:
        prompts[p][0] = np.nan
    df = frame(prompts, sample_ids={p: list(rng.permutation(100)[:len(v)])
                                    for p, v in prompts.items()})
    for chosen, rejected in [("max", "mu-2sigma"), ("mu+1sigma", "mu-1.5sigma")]:
        res = Positions(chosen=chosen, rejected=rejected, block_rows=7).select(df)
        pairs, skipped = ref_positions(df, chosen, rejected)
        assert as_dict(res.pairs) == pairs
        assert res.skipped == skipped


def test_position_grammar_and_order():
    assert parse_position("x", "mu-2sigma") == -2.0
    assert parse_position("x", "mu+0.5sigma") == 0.5
    assert parse_position("x", "mu-sigma") == -1.0
    assert parse_position("x", "mu") == 0.0
    assert parse_position("x", "max") == math.inf
    for bad in ("median", "mu-2", "mu--2sigma", "mu+sigma2", "2sigma"):
        with pytest.raises(ConfigError, match="unknown position"):
            Positions(rejected=bad)
    with pytest.raises(ConfigError, match="rejected"):
        Positions(chosen="mu-2sigma", rejected="mu-1sigma")
    with pytest.raises(ConfigError):
        Positions(chosen="min", rejected="min")
    with pytest.raises(ConfigError, match="top_fraction"):
        Positions(top_fraction=1.5)


# ------------------------------------------------------------------------------------- recipe
def test_recipe_matches_reference_given_the_draw():
    rng = np.random.default_rng(2)
    prompts = {f"p{i}": list(np.round(rng.normal(size=rng.integers(1, 15)), 1))
               for i in range(200)}
    prompts["p0"][1] = np.nan
    df = frame(prompts)
    strategy = Recipe(k=4, seed=3)
    res = strategy.select(df)
    m = build_matrix(df)
    expected, skipped = {}, Counter()
    for i, pid in enumerate(m.prompt_ids):
        items = scored_items(df)[pid]
        keys = random_keys(m.prompt_keys[i:i + 1], np.array([[s for s, _, _ in items]]), 3)[0]
        drawn = [it for _, it in sorted(zip(keys.tolist(), items, strict=True))][:4]
        c = ref_pick(items, "max") if items else None
        r = ref_pick(drawn, "min") if items else None
        reason = ref_degenerate(items, c, r)
        if reason:
            skipped[reason] += 1
        else:
            expected[pid] = (c[0], r[0], c[1], r[1])
    assert as_dict(res.pairs) == expected
    assert res.skipped == dict(skipped)


def test_recipe_is_stable_per_prompt_and_seeded():
    rng = np.random.default_rng(4)
    prompts = {f"p{i}": list(rng.normal(size=32)) for i in range(400)}
    df = frame(prompts)
    full = as_dict(Recipe(seed=1).select(df).pairs)
    half = as_dict(Recipe(seed=1).select(df[df.prompt_id.isin(list(prompts)[::2])]).pairs)
    assert all(full[p] == v for p, v in half.items())
    other = as_dict(Recipe(seed=2).select(df).pairs)
    assert other != full
    # k >= N is max vs min
    assert as_dict(Recipe(k=32).select(df).pairs) == ref_positions(df, "max", "min")[0]
    # the worst of 5 draws from 32: mean 1-based rank (33)/(6) = 5.5
    ranks = [sorted(prompts[p]).index(v[3]) + 1 for p, v in full.items()]
    assert abs(np.mean(ranks) - 33 / 6) < 0.4


# ------------------------------------------------------------------------------------- margin
def test_clipped_map_and_fusion_by_hand():
    m = np.array([-5.0, -2.0, -1.0, 0.0, 2.0, 4.0, 9.0])
    assert clipped_probability(m, -2.0, 2.0).tolist() == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0, 1.0]
    assert fuse([np.array([0.8]), np.array([0.6])])[0] == pytest.approx(0.48 / (0.48 + 0.08))
    assert fuse([np.array([0.3])])[0] == pytest.approx(0.3)
    assert fuse([np.array([1.0]), np.array([0.0])])[0] == 0.5      # 0/0 -> 0.5
    assert fuse([np.array([0.5]), np.array([0.5]), np.array([0.9])])[0] == pytest.approx(0.9)
    margins = np.arange(1.0, 101.0)
    assert search_upper(margins, 30) == 71.0                      # 71..100: 30 values
    assert search_upper(margins[:10], 30) == 10.0                  # fewer: the max


def ref_margin(df, sources, top_fraction, m1=-2.0, min_count=30, fusion="prob"):
    rows = []
    for pid, items in scored_items(df).items():
        c, r = (ref_pick(items, "max"), ref_pick(items, "min")) if items else (None, None)
        if ref_degenerate(items, c, r):
            continue
        imp = df.set_index(["prompt_id", "sample_id"])["implicit_logratio"]
        rows.append(dict(prompt_id=pid, m_ex=c[1] - r[1],
                         m_im=imp[(pid, c[0])] - imp[(pid, r[0])]))
    for tag in ("ex", "im"):
        values = sorted((row[f"m_{tag}"] for row in rows), reverse=True)
        m2 = values[min_count - 1] if len(values) >= min_count else values[0]
        for row in rows:
            row[f"p_{tag}"] = (min(max(row[f"m_{tag}"], m1), m2) - m1) / (m2 - m1)
    for row in rows:
        ps = [row["p_ex"]] + ([row["p_im"]] if "implicit" in sources else [])
        yes, no = math.prod(ps), math.prod(1 - p for p in ps)
        row["p"] = yes / (yes + no) if yes + no > 0 else 0.5
        row["add"] = row["m_ex"] + (row["m_im"] if "implicit" in sources else 0.0)
    key = "p" if fusion == "prob" else "add"
    rows.sort(key=lambda row: (-row[key], -row["add"]))  # equal p: the larger margin sum first
    return rows[:math.ceil(top_fraction * len(rows))]


@pytest.mark.parametrize("sources,fusion", [(["external", "implicit"], "prob"),
                                            (["external"], "prob"),
                                            (["external", "implicit"], "add")])
def test_margin_matches_reference(sources, fusion):
    rng = np.random.default_rng(5)
    prompts = {f"p{i:03d}": list(rng.normal(size=8)) for i in range(200)}
    implicit = {p: list(rng.normal(scale=3.0, size=8)) for p in prompts}
    df = frame(prompts, implicit_logratio=implicit)
    res = Margin(sources=sources, fusion=fusion, top_fraction=0.2).select(df)
    ref = ref_margin(df, sources, 0.2, fusion=fusion)
    if len(sources) == 2 and fusion == "prob":  # the cut falls inside the tie at p = 1, so
        ones = sum(row["p"] == 1.0 for row in ref_margin(df, sources, 1.0))  # the tie-break
        assert ones > 40 and (res.pairs.p_fused == 1.0).all()  # decides which 40 are kept
    got = res.pairs.sort_values("prompt_id")
    ref = sorted(ref, key=lambda row: row["prompt_id"])
    assert got.prompt_id.tolist() == [row["prompt_id"] for row in ref]
    np.testing.assert_allclose(got.p_fused, [row["p"] for row in ref], rtol=1e-12)
    if "implicit" in sources:
        np.testing.assert_allclose(got.margin_im, [row["m_im"] for row in ref], rtol=1e-12)
    else:
        assert "margin_im" not in got.columns
    assert res.skipped == {"below_top_fraction": 160}


def test_margin_needs_implicit_column_and_fixed_bounds():
    df = frame({"a": [0.0, 1.0, 3.0], "b": [1.0, 2.0, 0.0]})
    assert Margin().needs_implicit and not Margin(sources=["external"]).needs_implicit
    with pytest.raises(DataError, match="implicit sub-stage"):
        Margin().select(df)
    res = Margin(sources=["external"], bounds="fixed", m1_ex=0.0, m2_ex=4.0,
                 top_fraction=None).select(df)
    assert sorted(res.pairs.p_ex) == [0.5, 0.75]
    with pytest.raises(ConfigError, match="m2_ex"):
        Margin(bounds="fixed")
    with pytest.raises(ConfigError, match="m2_im"):
        Margin(m2_im=3.0)
    with pytest.raises(ConfigError, match="sources"):
        Margin(sources=["external", "oracle"])


def test_margin_on_the_datasets_own_pairs():
    df = frame({"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0], "c": [5.0, 5.0], "d": [1.0, np.nan]},
               data_chosen={"a": [True, False, False], "b": [False, False],
                            "c": [True, False], "d": [True, False]},
               data_rejected={"a": [False, False, True], "b": [False, True],
                              "c": [False, True], "d": [False, True]})
    res = Margin(candidates="data", sources=["external"], top_fraction=None,
                 bounds="fixed", m1_ex=-2.0, m2_ex=2.0).select(df)
    assert as_dict(res.pairs) == {"a": (0, 2, 1.0, 3.0), "c": (0, 1, 5.0, 5.0)}
    assert res.pairs.set_index("prompt_id").p_ex.to_dict() == {"a": 0.0, "c": 0.5}
    assert res.skipped == {"no_data_pair": 1, "unscored_pair": 1}
    # the data pair "a" has chosen below rejected: augmentation drops and counts it
    res = Margin(candidates="data", sources=["external"], top_fraction=None,
                 augment={"decimals": 0}).select(df)
    assert res.skipped["augment_score_order"] == 1 and len(res.pairs) == 2


# ------------------------------------------------------------------------------------ routing
def test_routing_threshold_and_curriculum():
    df = frame({"a": [0.0, 0.3], "b": [0.0, 2.0], "c": [1.0, 1.2, 1.1], "d": [0.0, 0.5]})
    res = Routing(threshold=0.5, curriculum=True).select(df)
    pairs = res.pairs
    assert pairs.prompt_id.tolist() == ["b", "d", "a", "c"]              # margin descending
    assert pairs.order.tolist() == [0, 1, 2, 3]
    assert dict(zip(pairs.prompt_id, pairs.route, strict=True)) == {
        "a": "sft", "b": "dpo", "c": "sft", "d": "dpo"}                  # 0.5 is not < 0.5
    assert Routing(curriculum=True).keep_order and not Routing().keep_order
    assert not Positions().keep_order
    assert Routing(margin_source="fused").needs_implicit


def test_routing_on_implicit_margin():
    df = frame({"a": [0.0, 1.0], "b": [0.0, 1.0]},
               implicit_logratio={"a": [0.0, 0.2], "b": [0.0, 3.0]})
    routes = Routing(margin_source="implicit").select(df).pairs.set_index("prompt_id").route
    assert routes.to_dict() == {"a": "sft", "b": "dpo"}


# ------------------------------------------------------------------------------------ augment
def test_augment_two_copies_and_scores():
    df = frame({"a": [0.0, 5.0, 10.0], "b": [2.0, 4.0, 6.0]})
    opts = AugmentOptions(scale_min=1.0, scale_max=10.0, decimals=1)
    res = Positions(chosen="max", rejected="min", augment=opts).select(df)
    p = res.pairs
    assert len(p) == 4 and p.order.tolist() == [0, 1, 2, 3]
    assert p.prompt_id.tolist() in (["a", "a", "b", "b"], ["b", "b", "a", "a"])
    p = pd.concat([p[p.prompt_id == "a"], p[p.prompt_id == "b"]])
    a, b = p.iloc[0], p.iloc[1]
    assert (a.augment_copy, b.augment_copy) == ("original", "swapped")
    assert (a.chosen_sample_id, a.rejected_sample_id) == (2, 0)
    assert (b.chosen_sample_id, b.rejected_sample_id) == (0, 2)
    assert (b.chosen, b.rejected) == (a.rejected, a.chosen)
    assert (a.target_score, b.target_score) == (10.0, 1.0)
    assert b.margin == -a.margin
    # b's rewards 6 and 2 on [0, 10] -> 1 + 0.6 * 9 = 6.4 and 1 + 0.2 * 9 = 2.8
    assert p.iloc[2].target_score == pytest.approx(6.4)
    assert p.iloc[3].target_score == pytest.approx(2.8)
    assert p.iloc[2].system_prompt.endswith("Overall score: 6.4.")
    assert a.system_prompt.endswith("Overall score: 10.")
    assert opts.eval_system_prompt() == a.system_prompt
    assert "scale 1 to 10" in opts.eval_system_prompt()
    fixed = AugmentOptions(reward_min=0.0, reward_max=20.0, decimals=0)
    assert fixed.to_scale(np.array([-5.0, 10.0, 30.0]), 0.0, 1.0).tolist() == [1.0, 6.0, 10.0]
    with pytest.raises(ConfigError, match="template"):
        AugmentOptions(template="no placeholder")
    with pytest.raises(ConfigError, match="augment"):
        Positions(augment={"scale": 3})


# -------------------------------------------------------------------------------- composition
def test_composition_filters_count_their_drops():
    df = frame({f"p{i}": [0.0, float(i)] for i in range(1, 11)})
    res = Positions(chosen="max", rejected="min", min_margin=3.0, top_fraction=0.5).select(df)
    assert sorted(res.pairs.margin) == [7.0, 8.0, 9.0, 10.0]  # 8 left, top ceil(4.0) = 4
    assert res.skipped == {"below_min_margin": 2, "below_top_fraction": 4}
    res = Positions(chosen="max", rejected="min", top_k=3, top_fraction=0.9).select(df)
    assert sorted(res.pairs.margin) == [8.0, 9.0, 10.0]
    # several pairs per prompt: keep the best per prompt by priority
    pairs = PairArrays(prompt_index=np.array([0, 0, 1, 0, 1]), chosen_col=np.arange(5),
                       rejected_col=np.arange(5), priority=np.array([1.0, 3.0, 2.0, 2.0, 5.0]),
                       columns={"margin": np.ones(5)}, chosen_position="x", rejected_position="y")
    kept = Positions(max_pairs_per_prompt=2).compose(pairs)
    assert kept.chosen_col.tolist() == [1, 2, 3, 4]
    assert kept.skipped == {"over_max_pairs_per_prompt": 1}


# ------------------------------------------------------------------------------ matrix and I/O
def test_matrix_layout():
    df = frame({"a": [1.0, np.nan, 3.0], "b": [5.0]}, sample_ids={"a": [7, 2, 4], "b": [0]})
    m = build_matrix(df)
    pids, rewards, sids, codes = m.prompt_ids, m.rewards, m.sample_ids, m.text_codes
    order = {p: i for i, p in enumerate(pids)}
    np.testing.assert_array_equal(sids[order["a"]], [2, 4, 7])
    np.testing.assert_array_equal(rewards[order["a"]], [np.nan, 3.0, 1.0])
    np.testing.assert_array_equal(sids[order["b"]], [0, -1, -1])
    assert codes[order["b"], 1] == -1 and len(set(codes[order["a"]])) == 3
    assert m.unscored == 1  # the NaN reward, not the padding
    # each cell points back at its source row: same prompt, same sample id, same reward
    for p, i in order.items():
        for j in np.flatnonzero(sids[i] >= 0):
            source = df.iloc[m.row_index[i, j]]
            assert (source["prompt_id"], source["sample_id"]) == (p, sids[i, j])
            np.testing.assert_equal(source["reward"], rewards[i, j])


def test_bad_data_is_named():
    df = frame({"a": [1.0, 2.0]})
    with pytest.raises(DataError, match="sample_id"):
        build_matrix(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(DataError, match="reward"):
        build_matrix(df.drop(columns="reward"))
    with pytest.raises(DataError, match="finite"):
        build_matrix(df.assign(reward=[1.0, np.inf]))


def test_select_matrix_on_a_bare_matrix():
    rewards = np.array([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [np.nan, 2.0, 0.0, np.nan]])
    out = Positions(chosen="max", rejected="min").select_matrix(rewards)
    assert out.prompt_index.tolist() == [0, 2]
    assert out.chosen_col.tolist() == [3, 1] and out.rejected_col.tolist() == [0, 2]
    assert out.skipped == {"zero_sigma": 1}
    assert ResponseMatrix.from_rewards(rewards).unscored == 2


def test_selection_options_compose_to_their_class(make_cfg):
    """Each conf/selection option, composed over its schema as the pipeline composes it, holds
    exactly its class's fields and builds; the plain options are their class's defaults,
    augment turns augmentation on and sweet_spot picks max against mu - 2 sigma."""
    files = sorted(CONF.glob("*.yaml"))
    assert {f.stem for f in files} >= {"positions", "sweet_spot", "max_min", "recipe",
                                       "margin", "routing", "augment"}
    built = {}
    for f in files:
        node = make_cfg(f"selection={f.stem}").selection
        strategy = build_node(node, "selection")
        cls = type(strategy)
        assert node._target_ == f"{cls.__module__}.{cls.__qualname__}", f
        assert set(node) - {"_target_"} == {fl.name for fl in fields(strategy)}, f
        if f.stem in ("positions", "margin", "routing", "recipe"):
            assert strategy == cls(), f
        built[f.stem] = strategy
    assert isinstance(built["augment"].augment, AugmentOptions)
    assert (built["sweet_spot"].chosen, built["sweet_spot"].rejected) == ("max", "mu-2sigma")
    assert (built["max_min"].chosen, built["max_min"].rejected) == ("max", "min")


def test_margin_ties_at_p_one_are_ranked_by_the_margin_sum():
    """Pairs that all fuse to p = 1 are kept by the DM-ADD sum, whatever the table order."""
    # 6 prompts, margins (external, implicit): with search_min_count=6 each M2 is the smallest
    # margin, so every pair has p_ex = p_im = 1; the sums are 5, 9, 7, 3, 8, 4 (not table order)
    ext = {"a": 2.0, "b": 4.0, "c": 3.0, "d": 1.5, "e": 5.0, "f": 2.5}
    imp = {"a": 3.0, "b": 5.0, "c": 4.0, "d": 1.5, "e": 3.0, "f": 1.5}
    prompts = {p: [0.0, m] for p, m in ext.items()}
    implicit = {p: [0.0, m] for p, m in imp.items()}
    df = frame(prompts, implicit_logratio=implicit)
    res = Margin(sources=["external", "implicit"], search_min_count=6, top_k=3).select(df)
    assert (res.pairs.p_fused == 1.0).all()
    by_sum = sorted(ext, key=lambda p: -(ext[p] + imp[p]))[:3]
    assert sorted(res.pairs.prompt_id) == sorted(by_sum) == ["b", "c", "e"]
    for order in (list(ext), list(reversed(ext))):  # the table order changes nothing
        shuffled = frame({p: prompts[p] for p in order},
                         implicit_logratio={p: implicit[p] for p in order})
        again = Margin(sources=["external", "implicit"], search_min_count=6, top_k=3)
        assert sorted(again.select(shuffled).pairs.prompt_id) == sorted(by_sum)

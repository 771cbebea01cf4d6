"""The fast paths of ``build_matrix`` (issue 14, item 5): prompt runs instead of a full
factorize, no sort or scatter for a frame already in matrix order, and texts compared lazily
(lengths, fingerprints, then bytes) only where a strategy asks. Each is checked against a plain
Python computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sweetspot.selection.margin import Margin
from sweetspot.selection.matrix import build_matrix, fingerprints, last_words, prompt_groups
from sweetspot.selection.positions import Positions, Recipe

# same length, same first and last 8 bytes: equal fingerprints, different texts
COLLIDING = ("abcdefgh-X-ijklmnop", "abcdefgh-Y-ijklmnop")
VOCAB = ["a", "b", "", "é", "a\x00", "same text", "x" * 30, "y" * 9, *COLLIDING]


def test_equal_texts_get_equal_fingerprints_wherever_they_sit():
    rng = np.random.default_rng(0)
    texts = [VOCAB[i] for i in rng.integers(len(VOCAB), size=300)]
    texts += ["z" * int(k) for k in rng.integers(0, 20, size=50)]
    texts.append("a")  # a short text at the very end of the byte buffer
    arr = pa.array(texts, type=pa.large_string())
    for start in (0, 1, 7, 13):  # sliced arrays read the same buffers at other offsets
        part = arr.slice(start)
        fp = fingerprints(part)
        order = np.argsort(rng.permutation(len(part)))
        last = last_words(part, order)
        seen: dict[str, int] = {}
        ends: dict[str, int] = {}
        for i, (text, value) in enumerate(zip(texts[start:], fp.tolist(), strict=True)):
            assert seen.setdefault(text, value) == value, text
            word = int(last[np.flatnonzero(order == i)[0]])
            assert ends.setdefault(text, word) == word, text
            tail = text.encode()[-8:]  # the last 8 bytes, little-endian, zero above a short text
            assert word == int.from_bytes(tail, "little"), text
    # a text alone in a tiny buffer, and the int32-offset string type, agree too
    fp = fingerprints(arr)
    for text in ("a", "", "é", COLLIDING[0]):
        alone = fingerprints(pa.array([text], type=pa.string()).cast(pa.large_string()))
        assert alone[0] == fp[texts.index(text)]
    # short texts differ by content, so do long ones that differ at either end
    assert len(set(fp[[texts.index(t) for t in ("a", "b", "", "a\x00", "é")]].tolist())) == 5
    index = np.array([[3, 1], [0, 350]])
    np.testing.assert_array_equal(fingerprints(arr, index), fp[index])


@pytest.mark.parametrize("kind", ["str", "int", "object"])
@pytest.mark.parametrize("grouped", [True, False])
def test_prompt_groups_are_pandas_factorize(kind, grouped):
    rng = np.random.default_rng(1)
    ids = np.repeat(rng.permutation(40), rng.integers(1, 5, size=40))
    if not grouped:
        ids = rng.permutation(ids)
    column = pd.Series(ids)
    if kind == "str":
        column = column.map(lambda i: f"prompt {i}")
    elif kind == "object":
        column = column.astype(object)
    groups = prompt_groups(column)
    # the independent computation: first-appearance numbering in plain Python
    first: dict[object, int] = {}
    expected = [first.setdefault(v, len(first)) for v in column.tolist()]
    assert groups.codes(len(column)).tolist() == expected
    assert list(groups.uniques) == list(first)
    assert (groups.starts is not None) == (grouped and kind != "object")


def _frame(rng: np.random.Generator, prompts: int, width: int, shuffle: bool) -> pd.DataFrame:
    rows = []
    for p in range(prompts):
        count = width if rng.random() < 0.5 else int(rng.integers(1, width + 1))
        for sid in np.sort(rng.choice(width + 2, size=count, replace=False)):
            text = VOCAB[int(rng.integers(len(VOCAB)))] if rng.random() < 0.5 else f"t{p}-{sid}"
            rows.append((f"p{p}", int(sid), None if rng.random() < 0.05 else text,
                         float(rng.normal())))
    df = pd.DataFrame(rows, columns=["prompt_id", "sample_id", "response", "reward"])
    return df.sample(frac=1, random_state=0).reset_index(drop=True) if shuffle else df


@pytest.mark.parametrize("shuffle", [False, True])
def test_text_codes_mark_the_first_column_with_the_same_text(shuffle):
    rng = np.random.default_rng(2)
    for _ in range(20):
        df = _frame(rng, prompts=int(rng.integers(1, 8)), width=int(rng.integers(1, 6)),
                    shuffle=shuffle)
        m = build_matrix(df)
        for i, pid in enumerate(m.prompt_ids):
            mine = df[df["prompt_id"] == pid].sort_values("sample_id")
            np.testing.assert_array_equal(m.sample_ids[i, :len(mine)], mine["sample_id"])
            np.testing.assert_array_equal(m.rewards[i, :len(mine)], mine["reward"])
            texts = [t if isinstance(t, str) else None for t in mine["response"]]
            expected = [-1 if t is None else texts.index(t) for t in texts]
            expected += [-1] * (m.shape[1] - len(texts))
            assert m.text_codes[i].tolist() == expected


def test_a_fingerprint_collision_is_settled_by_the_texts():
    df = pd.DataFrame({"prompt_id": ["p"] * 3, "sample_id": [0, 1, 2],
                       "response": [COLLIDING[0], COLLIDING[1], COLLIDING[0]],
                       "reward": [3.0, 1.0, 2.0]})
    fp = fingerprints(pa.array(list(COLLIDING), type=pa.large_string()))
    assert fp[0] == fp[1]  # the premise: only the exact check tells them apart
    assert build_matrix(df).text_codes.tolist() == [[0, 1, 0]]
    pairs = Positions(chosen="max", rejected="min").select(df).pairs
    assert pairs[["chosen", "rejected"]].values.tolist() == [list(COLLIDING)]
    same = df.assign(response=[COLLIDING[0]] * 3)
    assert Positions().select(same).skipped == {"identical_texts": 1}


def test_selection_is_the_same_whatever_the_row_order_and_text_storage():
    rng = np.random.default_rng(3)
    df = _frame(rng, prompts=30, width=6, shuffle=False)
    df["response"] = df["response"].fillna("missing")
    ordered = Positions(chosen="max", rejected="min").select(df)

    def by_prompt(pairs: pd.DataFrame) -> pd.DataFrame:  # prompts come in first-seen order
        return pairs.drop(columns="order").sort_values("prompt_id").reset_index(drop=True)

    for other in (df.sample(frac=1, random_state=1).reset_index(drop=True),
                  df.assign(response=df["response"].astype(object))):
        result = Positions(chosen="max", rejected="min").select(other)
        pd.testing.assert_frame_equal(by_prompt(result.pairs), by_prompt(ordered.pairs))
        assert result.skipped == ordered.skipped


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _storages(df: pd.DataFrame) -> list[pd.DataFrame]:
    """The frame with its texts as pandas' default strings, objects and Arrow strings, in its
    own row order and shuffled."""
    out = [df, df.assign(response=df["response"].astype(object)),
           df.assign(response=df["response"].astype("string[pyarrow]"))]
    return out + [other.sample(frac=1, random_state=4).reset_index(drop=True) for other in out]


def test_lazy_text_comparisons_are_plain_string_equality():
    """``same_text`` on random cells (padding, missing texts, fingerprint collisions) is Python's
    ``==`` on the texts, with two cells without a text counting as the same."""
    rng = np.random.default_rng(5)
    for _ in range(10):
        base = _frame(rng, prompts=int(rng.integers(1, 8)), width=int(rng.integers(1, 6)),
                      shuffle=False)
        for df in _storages(base):
            m = build_matrix(df)
            cells = {}
            for i, pid in enumerate(m.prompt_ids):
                mine = df[df["prompt_id"] == pid].sort_values("sample_id")
                cells[i] = [_text(t) for t in mine["response"]]
                cells[i] += [None] * (m.shape[1] - len(cells[i]))
            rows = rng.integers(m.shape[0], size=50)
            a, b = rng.integers(m.shape[1], size=(2, 50))
            expected = [cells[i][x] == cells[i][y] for i, x, y in zip(rows, a, b, strict=True)]
            assert m.same_text(rows, a, b).tolist() == expected


def _reference(df: pd.DataFrame) -> tuple[dict, dict]:
    """max/min pairs and skip reasons per prompt, in plain Python: ties go to the lowest
    sample_id, a missing text is a text of its own (None)."""
    pairs, skipped = {}, {}
    for pid, rows in df.groupby("prompt_id", sort=False):
        items = [(s, r, _text(t)) for s, r, t in
                 sorted(zip(rows["sample_id"], rows["reward"], rows["response"], strict=True))
                 if not np.isnan(r)]
        rewards = [r for _, r, _ in items]
        reason = None
        if len(items) < 2:
            reason = "too_few_responses"
        elif max(rewards) == min(rewards):
            reason = "zero_sigma"
        elif len({t for _, _, t in items}) == 1:
            reason = "identical_texts"
        else:
            best = items[rewards.index(max(rewards))]
            worst = items[rewards.index(min(rewards))]
            if best[2] == worst[2]:
                reason = "same_text"
            else:
                pairs[pid] = (best[0], worst[0], best[2], worst[2])
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
    return pairs, skipped


def _data_reference(df: pd.DataFrame) -> tuple[dict, dict]:
    pairs, skipped = {}, {}
    for pid, rows in df.groupby("prompt_id", sort=False):
        chosen, rejected = rows[rows["data_chosen"]], rows[rows["data_rejected"]]
        reason = None
        if chosen.empty or rejected.empty:
            reason = "no_data_pair"
        elif np.isnan(chosen["reward"].iloc[0]) or np.isnan(rejected["reward"].iloc[0]):
            reason = "unscored_pair"
        elif _text(chosen["response"].iloc[0]) == _text(rejected["response"].iloc[0]):
            reason = "same_text"
        else:
            pairs[pid] = (chosen["sample_id"].iloc[0], rejected["sample_id"].iloc[0],
                          _text(chosen["response"].iloc[0]), _text(rejected["response"].iloc[0]))
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
    return pairs, skipped


def _got(result) -> dict:
    return {row.prompt_id: (row.chosen_sample_id, row.rejected_sample_id, _text(row.chosen),
                            _text(row.rejected)) for row in result.pairs.itertuples()}


def test_text_skips_match_a_plain_python_reference():
    """Prompts whose texts are all one, picks that share a text (missing texts included), unscored
    responses and padding: the lazy text checks skip exactly the prompts the reference skips,
    for max/min, the recipe (k above N draws every response, so it rejects the minimum) and
    the dataset's own pairs."""
    rng = np.random.default_rng(6)
    strategies = [Positions(chosen="max", rejected="min"), Recipe(k=100),
                  Positions(chosen="max", rejected="min", block_rows=2)]
    data = Margin(sources=["external"], candidates="data", top_fraction=None, search_min_count=2)
    for _ in range(12):
        df = _frame(rng, prompts=int(rng.integers(1, 12)), width=int(rng.integers(1, 7)),
                    shuffle=False)
        same = rng.random(len(df)) < 0.3  # more prompts whose texts are all one
        df.loc[same, "response"] = df.loc[same, "prompt_id"]
        df.loc[rng.random(len(df)) < 0.15, "reward"] = np.nan
        df["reward"] = df["reward"].where(rng.random(len(df)) < 0.7, df["reward"].round())
        df["data_chosen"] = df["data_rejected"] = False
        for _, index in df.groupby("prompt_id").indices.items():
            if len(index) >= 2 and rng.random() < 0.8:
                c, r = rng.choice(index, 2, replace=False)
                df.loc[c, "data_chosen"], df.loc[r, "data_rejected"] = True, True
        pairs, skipped = _reference(df)
        data_pairs, data_skipped = _data_reference(df)
        for other in _storages(df):
            for strategy in strategies:
                result = strategy.select(other)
                assert (_got(result), result.skipped) == (pairs, skipped)
            result = data.select(other)
            assert (_got(result), result.skipped) == (data_pairs, data_skipped)

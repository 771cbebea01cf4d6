"""The fast paths of ``build_matrix`` (issue 14, item 5): prompt runs instead of a full
factorize, text fingerprints instead of factorizing every response, no sort or scatter for a
frame already in matrix order. Each is checked against a plain Python computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sweetspot.selection.matrix import build_matrix, fingerprints, prompt_groups
from sweetspot.selection.positions import Positions

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
        fp = fingerprints(arr.slice(start))
        seen: dict[str, int] = {}
        for text, value in zip(texts[start:], fp.tolist(), strict=True):
            assert seen.setdefault(text, value) == value, text
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
            if m.text_codes is None:  # only when every row is full and all its texts differ
                assert len(texts) == m.shape[1] and expected == list(range(m.shape[1]))
            else:
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

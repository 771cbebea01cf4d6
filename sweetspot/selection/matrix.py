"""The dense per-prompt view every strategy works on: one row per prompt, one column per response.

Columns are ordered by ``sample_id`` within each prompt, so "first column" means "lowest
``sample_id``": every tie (argmax, nearest target, lowest of a random subset) is broken that way.
Padding (prompts with fewer responses than the widest prompt) is NaN in ``rewards`` and -1 in
the integer matrices; an unscored response (reward NaN) stays in the matrix as NaN and is
excluded from every statistic. Texts are not read when the matrix is built: ``texts`` compares
them lazily, only for the cells a strategy asks about (its chosen and rejected responses, and the
rows where those two share a text), since reading every text is memory-bound and costs more than
the whole selection. ``text_codes`` (the column of the row's first response with the same text)
is built on request, for inspection.

A frame already in matrix order (what every stage writes) is placed by reshaping, so the
matrices may be read-only views of the frame's columns: strategies never write to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sweetspot.errors import DataError

REQUIRED_COLUMNS = ("prompt_id", "sample_id", "response", "reward")
IMPLICIT_COLUMN = "implicit_logratio"
DATA_CHOSEN_COLUMN = "data_chosen"
DATA_REJECTED_COLUMN = "data_rejected"


@dataclass
class ResponseMatrix:
    """Dense P x N matrices of one responses table (see the module docstring for the layout)."""

    rewards: np.ndarray                     # float64 [P, N], NaN = unscored or padding
    prompt_ids: np.ndarray | None = None    # object [P]
    sample_ids: np.ndarray | None = None    # int64 [P, N], -1 = padding
    texts: ResponseTexts | None = None      # the texts behind the cells; None = all distinct
    row_index: np.ndarray | None = None     # int64 [P, N], row in the source frame, -1 = padding
    implicit: np.ndarray | None = None      # float64 [P, N], implicit log-ratio of each response
    data_chosen: np.ndarray | None = None   # bool [P, N], the dataset's own chosen response
    data_rejected: np.ndarray | None = None  # bool [P, N], the dataset's own rejected response
    prompt_keys: np.ndarray | None = None   # uint64 [P], stable hash of prompt_id (seeds draws)
    unscored: int = 0                       # responses with a NaN reward

    @classmethod
    def from_rewards(cls, rewards: np.ndarray, **arrays: np.ndarray | None) -> ResponseMatrix:
        """Wrap a bare reward matrix (the benchmark's entry point): sample ids = column index,
        prompt keys = row index, texts all distinct unless ``text_codes`` is given (int [P, N]:
        equal codes in a row = same text, -1 = no text). Without ``sample_ids`` every NaN counts
        as an unscored response (no padding)."""
        rewards = np.asarray(rewards)
        unscored = int(np.isnan(rewards).sum())
        if arrays.get("sample_ids") is not None:
            unscored -= int((arrays["sample_ids"] < 0).sum())
        codes = arrays.pop("text_codes", None)
        texts = None
        if codes is not None:
            codes = np.asarray(codes, dtype=np.int64)
            texts = ResponseTexts(np.arange(codes.size, dtype=np.int64).reshape(codes.shape),
                                  labels=codes.ravel())
        return cls(rewards=rewards, unscored=unscored, texts=texts, **arrays)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rewards.shape

    @property
    def text_codes(self) -> np.ndarray | None:
        """int64 [P, N]: per cell, the column of the row's first response with the same text
        (-1: padding or no text); None when no texts are known (all distinct). Built on
        request (it reads every text): strategies use ``same_text``."""
        return None if self.texts is None else self.texts.codes()

    def same_text(self, rows: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per i, whether cells (rows[i], a[i]) and (rows[i], b[i]) hold the same text (two
        cells without a text count as the same); all False when no texts are known."""
        if self.texts is None:
            return np.zeros(len(rows), bool)
        return self.texts.same(rows, a, b)

    def keys(self) -> np.ndarray:
        if self.prompt_keys is not None:
            return self.prompt_keys
        return np.arange(self.shape[0], dtype=np.uint64)

    def all_sample_ids(self) -> np.ndarray:
        if self.sample_ids is not None:
            return self.sample_ids
        return np.broadcast_to(np.arange(self.shape[1], dtype=np.int64), self.shape)


def _column(responses: pd.DataFrame, name: str, dtype: type) -> np.ndarray:
    try:
        return responses[name].to_numpy(dtype=dtype)
    except (TypeError, ValueError) as err:
        raise DataError(f"column '{name}' must be {dtype.__name__}: {err}", field=name) from err


@dataclass
class _Layout:
    """Where each source row goes in the matrix. ``order`` is None when the rows are already in
    matrix order (grouped by prompt, ascending ``sample_id``: what every stage writes), and
    ``flat`` is None when no prompt is short of responses; then placing a column is a reshape."""

    order: np.ndarray | None
    flat: np.ndarray | None
    shape: tuple[int, int]

    def place(self, values: np.ndarray, fill: object) -> np.ndarray:
        if self.order is not None:
            values = values[self.order]
        if self.flat is None:
            return values.reshape(self.shape)
        out = np.full(self.shape[0] * self.shape[1], fill, dtype=values.dtype)
        out[self.flat] = values
        return out.reshape(self.shape)


@dataclass
class PromptGroups:
    """``pd.factorize(prompt_id, sort=False)``'s result (``uniques`` as objects), kept as runs
    when every prompt's rows are contiguous (``starts`` of each run): then no per-row code is
    hashed or stored. ``codes()`` gives the per-row codes either way."""

    uniques: np.ndarray
    starts: np.ndarray | None = None
    row_codes: np.ndarray | None = None
    keys: np.ndarray | None = None  # pd.util.hash_array of uniques, when already computed

    def codes(self, rows: int) -> np.ndarray:
        if self.row_codes is None:
            self.row_codes = np.repeat(np.arange(len(self.starts)), self.counts(rows))
        return self.row_codes

    def counts(self, rows: int) -> np.ndarray:
        if self.starts is not None:
            return np.diff(np.append(self.starts, rows))
        return np.bincount(self.row_codes, minlength=len(self.uniques))


def _unique(values: np.ndarray) -> np.ndarray | None:
    """The objects' pandas hashes (what ``prompt_keys`` holds) when the objects all differ,
    else None: hashes that all differ prove it; equal hashes are settled by a factorize."""
    keys = pd.util.hash_array(values, categorize=False)
    ordered = np.sort(keys)
    if not (ordered[1:] == ordered[:-1]).any() or len(pd.unique(values)) == len(values):
        return keys
    return None


def _runs(column: pd.Series) -> PromptGroups | None:
    """Where each run of equal values starts, and the value of each run (as objects), compared
    in the column's own storage (Arrow strings or integers, NumPy integers); None for any other
    storage, or when a value comes back in a later run (then the runs are not the prompts)."""
    dtype = column.dtype
    if isinstance(dtype, pd.ArrowDtype) or getattr(dtype, "storage", None) == "pyarrow":
        values = pa.array(column.array)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        kind = values.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_integer(kind)):
            return None
        changes = pc.indices_nonzero(pc.not_equal(values[1:], values[:-1]))
        starts = np.r_[0, changes.to_numpy().astype(np.int64) + 1]
        heads = np.asarray(values.take(pa.array(starts)).to_numpy(zero_copy_only=False),
                           dtype=object)
    elif isinstance(dtype, np.dtype) and dtype.kind in "iub":
        values = column.to_numpy()
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        heads = values[starts].astype(object)
    else:
        return None
    keys = _unique(heads)
    return None if keys is None else PromptGroups(uniques=heads, starts=starts, keys=keys)


def prompt_groups(column: pd.Series) -> PromptGroups:
    """Factorize the prompt ids, without hashing every row when each prompt's rows are
    contiguous: the run starts are found by comparing neighbours, and only they are checked
    for repeats. Same codes and uniques as ``pd.factorize`` (first appearance order)."""
    if column.isna().any():
        raise DataError("prompt_id must not be missing", field="prompt_id")
    runs = _runs(column) if len(column) else None
    if runs is not None:
        return runs
    codes, uniques = pd.factorize(column, sort=False)
    return PromptGroups(uniques=np.asarray(uniques, dtype=object), row_codes=codes)


def _string_array(column: pd.Series) -> pa.LargeStringArray | None:
    """The texts as one Arrow large_string array (no copy for Arrow-backed strings); None when
    the column holds anything but strings and missing values."""
    try:
        if isinstance(column.dtype, np.dtype):
            values = pa.array(column.to_numpy(), from_pandas=True)
        else:
            values = pa.array(column.array)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_string(values.type) or pa.types.is_string_view(values.type):
        values = values.cast(pa.large_string())
    return values if pa.types.is_large_string(values.type) else None


_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it is a bijection


def _words(data: np.ndarray, pos: np.ndarray, ascending: bool = False) -> np.ndarray:
    """Bytes ``pos .. pos + 7`` of ``data`` as little-endian uint64 (bytes past the end read 0).

    Each is assembled from the two aligned words that hold it (NumPy gathers aligned words
    ten times faster than unaligned ones); reads at the buffer's edges go byte by byte.
    ``ascending`` positions have their extremes at their ends (no pass to find them).
    """
    base = -data.ctypes.data % 8
    count = max((len(data) - base) // 8, 0)
    if not len(pos):
        return np.zeros(0, np.uint64)
    rel = pos - base if base else pos
    first, last = (rel[0], rel[-1]) if ascending else (rel.min(), rel.max())
    if count >= 2 and first >= 0 and last <= 8 * count - 16:
        aligned = data[base:base + 8 * count].view(np.uint64)
        q = rel >> 3
        bits = ((rel & 7) << 3).view(np.uint64)
        out = aligned[q]
        out >>= bits
        q += 1
        high = aligned[q]
        high <<= np.uint64(1)  # then << (63 - bits): 0 when bits == 0 (never a 64-bit shift)
        np.subtract(np.uint64(63), bits, out=bits)
        high <<= bits
        out |= high
        return out
    word = np.zeros(len(pos), np.uint64)  # near an edge (rare): byte by byte
    final = max(len(data) - 1, 0)
    for k in range(8):
        byte = data[np.minimum(pos + k, final)] if len(data) else np.zeros(len(pos), np.uint8)
        word |= np.where(pos + k < len(data), byte, 0).astype(np.uint64) << np.uint64(8 * k)
    return word


def _text_buffers(texts: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray]:
    """Arrow's offsets (len + 1) and bytes of a large_string array, as NumPy views."""
    _, offset_buf, data_buf = texts.buffers()
    offsets = np.frombuffer(offset_buf, np.int64)[texts.offset:texts.offset + len(texts) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets, data


def last_words(texts: pa.LargeStringArray, index: np.ndarray) -> np.ndarray:
    """The last 8 bytes of each text ``texts[index]`` as a uint64 (all of a shorter text's
    bytes, the rest zero): equal texts give equal words. One read per text, the cheapest
    filter before ``fingerprints`` when texts of equal length differ at their ends."""
    offsets, data = _text_buffers(texts)
    starts, ends = offsets[index], offsets[index + 1]
    lengths = ends - starts
    word = _words(data, np.maximum(ends - 8, starts))
    short = np.flatnonzero(lengths < 8)
    if short.size:
        word[short] &= _MASKS.take(lengths[short])
    return word


def fingerprints(texts: pa.LargeStringArray, index: np.ndarray | slice | None = None
                 ) -> np.ndarray:
    """A uint64 per text (of ``texts[index]``; all when None) from its byte length, first 8
    and last 8 bytes, read in place from Arrow's buffers: the cost is per text, not per byte.
    Equal texts always get equal fingerprints, so different fingerprints prove different texts;
    equal ones are only candidates, to be checked exactly."""
    offsets, data = _text_buffers(texts)
    ascending = index is None or isinstance(index, slice)  # Arrow's offsets never fall
    if ascending:
        index = slice(None) if index is None else index
        starts = offsets[:-1][index]
        ends = offsets[1:][index]
    else:
        starts, ends = offsets[index], offsets[index + 1]
    shape = starts.shape
    starts, ends = starts.ravel(), ends.ravel()
    lengths = ends - starts
    x = _words(data, starts, ascending)
    if not len(x):
        return x.reshape(shape)
    if lengths.min() < 8:  # keep only a short text's own bytes
        x &= _MASKS.take(np.minimum(lengths, 8))
    x *= _MIX  # equal texts give equal words and lengths, so equal fingerprints
    x += lengths.view(np.uint64)
    if lengths.max() > 8:  # and the last 8 bytes of every longer text
        if lengths.min() > 8:
            tail = _words(data, ends - 8, ascending)
            tail *= _MIX
            tail ^= x
            x = tail
        else:
            long = np.flatnonzero(lengths > 8)
            tail = _words(data, ends[long] - 8, ascending)
            tail *= _MIX
            x[long] ^= tail
    return x.reshape(shape)


@dataclass
class ResponseTexts:
    """The texts behind a matrix's cells, compared only where asked: by source row, either as
    Arrow strings (``arrow``, read in place) or as integer labels (``labels``, -1 = no text:
    texts that are not strings, factorized, or the codes ``from_rewards`` was given).

    A comparison reads each pair's lengths from Arrow's offsets, then the last 8 bytes of the
    pairs of equal length, then the fingerprints (first and last 8 bytes) of those still
    equal, then the bytes of the pairs whose fingerprints agree: the cost is per pair
    compared, not per text in the table."""

    row_index: np.ndarray                     # int64 [P, N], source row of each cell, -1 = none
    arrow: pa.LargeStringArray | None = None
    labels: np.ndarray | None = None
    _codes: np.ndarray | None = field(default=None, init=False, repr=False)

    def _missing(self, source: np.ndarray) -> np.ndarray:
        """Whether each source row (>= 0) has no text, from Arrow's validity bitmap."""
        if self.labels is not None:
            return self.labels[source] < 0
        if not self.arrow.null_count:
            return np.zeros(len(source), bool)
        bitmap = np.frombuffer(self.arrow.buffers()[0], np.uint8)
        bit = source + self.arrow.offset
        return ((bitmap[bit >> 3] >> (bit & 7).astype(np.uint8)) & 1) == 0

    def same_rows(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per i, whether source rows a[i] and b[i] hold the same text (-1 = padding: no text;
        two without a text count as the same)."""
        none_a, none_b = a < 0, b < 0
        for none, source in ((none_a, a), (none_b, b)):
            present = np.flatnonzero(~none)
            none[present] = self._missing(source[present])
        out = none_a & none_b
        check = np.flatnonzero(~none_a & ~none_b)
        ia, ib = a[check], b[check]
        if self.labels is not None:
            out[check] = self.labels[ia] == self.labels[ib]
            return out
        itself = ia == ib  # one response against itself
        out[check[itself]] = True
        check, ia, ib = check[~itself], ia[~itself], ib[~itself]
        offsets, _ = _text_buffers(self.arrow)
        candidate = (offsets[ia + 1] - offsets[ia]) == (offsets[ib + 1] - offsets[ib])
        check, ia, ib = check[candidate], ia[candidate], ib[candidate]
        for clue in (last_words, fingerprints):  # texts that differ near either end
            candidate = clue(self.arrow, ia) == clue(self.arrow, ib)
            check, ia, ib = check[candidate], ia[candidate], ib[candidate]
        if len(check):  # the exact check, on the few pairs left
            equal = pc.equal(self.arrow.take(pa.array(ia)), self.arrow.take(pa.array(ib)))
            out[check] = equal.to_numpy(zero_copy_only=False)
        return out

    def same(self, rows: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per i, whether cells (rows[i], a[i]) and (rows[i], b[i]) hold the same text."""
        return self.same_rows(self.row_index[rows, a], self.row_index[rows, b])

    def codes(self) -> np.ndarray:
        """The ``text_codes`` matrix (see ``ResponseMatrix``), built once on request."""
        if self._codes is None:
            P, N = self.row_index.shape
            source = self.row_index.ravel()
            cell = np.flatnonzero(source >= 0)
            cell = cell[~self._missing(source[cell])]
            if self.labels is not None:
                labels = self.labels[source[cell]]
            else:
                labels = pc.dictionary_encode(self.arrow.take(pa.array(source[cell])))
                labels = labels.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            rows, cols = np.divmod(cell, max(N, 1))
            key = rows * (int(labels.max(initial=0)) + 1) + labels
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            codes = np.full(P * N, -1, np.int64)
            codes[cell] = cols[first][inverse.ravel()]
            self._codes = codes.reshape(P, N)
        return self._codes


def _response_texts(column: pd.Series, row_index: np.ndarray) -> ResponseTexts:
    """The responses as ``ResponseTexts``: Arrow strings in place, anything else factorized."""
    texts = _string_array(column)
    if texts is not None:
        return ResponseTexts(row_index, arrow=texts)
    labels, _ = pd.factorize(column, sort=False)
    return ResponseTexts(row_index, labels=labels.astype(np.int64))


def build_matrix(responses: pd.DataFrame) -> ResponseMatrix:
    """Build every matrix a strategy may need from a responses frame. A frame already in
    matrix order (grouped by prompt, ascending ``sample_id``) is neither sorted nor scattered."""
    missing = [c for c in REQUIRED_COLUMNS if c not in responses.columns]
    if missing:
        raise DataError(f"responses table lacks column(s) {missing}", field=missing[0])
    groups = prompt_groups(responses["prompt_id"])
    sample = responses["sample_id"]
    if not pd.api.types.is_integer_dtype(sample.dtype):
        raise DataError("sample_id must be an integer column", field="sample_id")
    sample_ids = sample.to_numpy(dtype=np.int64)
    reward = _column(responses, "reward", float)
    unfinished = np.flatnonzero(~np.isfinite(reward))  # one pass: most rewards are finite
    unscored = int(np.isnan(reward[unfinished]).sum())
    if unscored < len(unfinished):
        raise DataError("reward must be finite (NaN marks an unscored response)", field="reward")

    total = len(responses)
    if groups.starts is not None:  # runs of prompts: in order when sample ids rise in each
        falls = np.flatnonzero(sample_ids[1:] <= sample_ids[:-1]) + 1
        in_order = bool(np.isin(falls, groups.starts, assume_unique=True).all())
    else:
        rising = sample_ids[1:] > sample_ids[:-1]
        codes = groups.codes(total)
        step = codes[1:] - codes[:-1]
        in_order = bool(((step > 0) | ((step == 0) & rising)).all())
    order = None
    if not in_order:
        codes = groups.codes(total)
        order = np.lexsort((sample_ids, codes))
        rows, sids = codes[order], sample_ids[order]
        dup = np.flatnonzero((rows[1:] == rows[:-1]) & (sids[1:] == sids[:-1]))
        if dup.size:
            raise DataError(f"prompt {groups.uniques[rows[dup[0]]]!r} has sample_id "
                            f"{sids[dup[0]]} twice", field="sample_id")
    counts = groups.counts(total)
    shape = (len(groups.uniques), int(counts.max()) if len(counts) else 0)
    flat = None
    if not (counts == shape[1]).all():
        rows = groups.codes(total) if order is None else rows
        starts = np.cumsum(counts) - counts
        flat = rows * shape[1] + np.arange(total) - starts[rows]
    layout = _Layout(order=order, flat=flat, shape=shape)
    row_index = layout.place(np.arange(total, dtype=np.int64), -1)
    prompt_ids = groups.uniques
    matrix = ResponseMatrix(
        rewards=layout.place(reward, np.nan),
        prompt_ids=prompt_ids,
        sample_ids=layout.place(sample_ids, -1),
        texts=_response_texts(responses["response"], row_index),
        row_index=row_index,
        prompt_keys=(groups.keys if groups.keys is not None
                     else pd.util.hash_array(prompt_ids, categorize=False)),
        unscored=unscored,
    )
    if IMPLICIT_COLUMN in responses.columns:
        matrix.implicit = layout.place(_column(responses, IMPLICIT_COLUMN, float), np.nan)
    for name in (DATA_CHOSEN_COLUMN, DATA_REJECTED_COLUMN):
        if name in responses.columns:
            flags = responses[name].fillna(False).to_numpy(dtype=bool)
            setattr(matrix, name, layout.place(flags, False))
    return matrix

"""The dense per-prompt view every strategy works on: one row per prompt, one column per response.

Columns are ordered by ``sample_id`` within each prompt, so "first column" means "lowest
``sample_id``": every tie (argmax, nearest target, lowest of a random subset) is broken that way.
Padding (prompts with fewer responses than the widest prompt) is NaN in ``rewards`` and -1 in
the integer matrices; an unscored response (reward NaN) stays in the matrix as NaN and is
excluded from every statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

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
    text_codes: np.ndarray | None = None    # int64 [P, N], same code = same text; None = distinct
    row_index: np.ndarray | None = None     # int64 [P, N], row in the source frame, -1 = padding
    implicit: np.ndarray | None = None      # float64 [P, N], implicit log-ratio of each response
    data_chosen: np.ndarray | None = None   # bool [P, N], the dataset's own chosen response
    data_rejected: np.ndarray | None = None  # bool [P, N], the dataset's own rejected response
    prompt_keys: np.ndarray | None = None   # uint64 [P], stable hash of prompt_id (seeds draws)
    unscored: int = 0                       # responses with a NaN reward

    @classmethod
    def from_rewards(cls, rewards: np.ndarray, **arrays: np.ndarray | None) -> ResponseMatrix:
        """Wrap a bare reward matrix (the benchmark's entry point): sample ids = column index,
        prompt keys = row index, texts all distinct unless ``text_codes`` is given. Without
        ``sample_ids`` every NaN counts as an unscored response (no padding)."""
        rewards = np.asarray(rewards)
        unscored = int(np.isnan(rewards).sum())
        if arrays.get("sample_ids") is not None:
            unscored -= int((arrays["sample_ids"] < 0).sum())
        return cls(rewards=rewards, unscored=unscored, **arrays)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rewards.shape

    def sample_id_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.sample_ids is None:
            return cols.astype(np.int64)
        return self.sample_ids[rows, cols]

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


def _scatter(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
             fill: object) -> np.ndarray:
    out = np.full(shape, fill, dtype=values.dtype)
    out[rows, cols] = values
    return out


def build_matrix(responses: pd.DataFrame) -> ResponseMatrix:
    """Build every matrix a strategy may need from a responses frame, in one sort."""
    missing = [c for c in REQUIRED_COLUMNS if c not in responses.columns]
    if missing:
        raise DataError(f"responses table lacks column(s) {missing}", field=missing[0])
    prompt_codes, uniques = pd.factorize(responses["prompt_id"], sort=False)
    if (prompt_codes < 0).any():
        raise DataError("prompt_id must not be missing", field="prompt_id")
    sample = responses["sample_id"]
    if not pd.api.types.is_integer_dtype(sample.dtype):
        raise DataError("sample_id must be an integer column", field="sample_id")
    sample_ids = sample.to_numpy(dtype=np.int64)
    reward = _column(responses, "reward", float)
    if np.isinf(reward).any():
        raise DataError("reward must be finite (NaN marks an unscored response)", field="reward")

    order = np.lexsort((sample_ids, prompt_codes))
    rows, sids = prompt_codes[order], sample_ids[order]
    dup = np.flatnonzero((rows[1:] == rows[:-1]) & (sids[1:] == sids[:-1]))
    if dup.size:
        raise DataError(f"prompt {uniques[rows[dup[0]]]!r} has sample_id {sids[dup[0]]} twice",
                        field="sample_id")
    counts = np.bincount(rows, minlength=len(uniques))
    starts = np.cumsum(counts) - counts
    cols = np.arange(len(order)) - starts[rows]
    shape = (len(uniques), int(counts.max()) if len(counts) else 0)

    text_codes, _ = pd.factorize(responses["response"], sort=False)
    matrix = ResponseMatrix(
        rewards=_scatter(reward[order], rows, cols, shape, np.nan),
        prompt_ids=np.asarray(uniques, dtype=object),
        sample_ids=_scatter(sids, rows, cols, shape, -1),
        text_codes=_scatter(text_codes.astype(np.int64)[order], rows, cols, shape, -1),
        row_index=_scatter(order.astype(np.int64), rows, cols, shape, -1),
        prompt_keys=pd.util.hash_array(np.asarray(uniques, dtype=object), categorize=False),
        unscored=int(np.isnan(reward).sum()),
    )
    if IMPLICIT_COLUMN in responses.columns:
        implicit = _column(responses, IMPLICIT_COLUMN, float)
        matrix.implicit = _scatter(implicit[order], rows, cols, shape, np.nan)
    for name in (DATA_CHOSEN_COLUMN, DATA_REJECTED_COLUMN):
        if name in responses.columns:
            flags = responses[name].fillna(False).to_numpy(dtype=bool)
            setattr(matrix, name, _scatter(flags[order], rows, cols, shape, False))
    return matrix


def reward_matrix(responses: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(prompt_ids[P], rewards[P, N], sample_ids[P, N], text_codes[P, N])`` for reuse by other
    stages (denoising, reports); see the module docstring for padding and ordering."""
    m = build_matrix(responses)
    return m.prompt_ids, m.rewards, m.sample_ids, m.text_codes

"""Scores that are already in the data: a column of the responses table, optionally scaled.

For responses that come with scores (``sampler=offline`` writes a ``score`` column, or named
ones such as UltraFeedback's ratings), and for simple signals the sampler records (``num_tokens``
with a negative weight inside an ``ensemble`` is a length penalty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweetspot.errors import DataError
from sweetspot.scoring.base import Scorer
from sweetspot.scoring.reward_model import is_empty, require_columns
from sweetspot.validation import require


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


@dataclass(kw_only=True)
class ColumnScorer(Scorer):
    """``score/<name>`` = ``scale`` * the column named by ``source``.

    The field is ``source``, not ``column``: every scorer's ``column`` property is its output
    column ``score/<name>``, which the pipeline reads. A table without the source column is a
    DataError naming it. Values must be numbers (or numeric strings); one that is not is a
    DataError naming its prompt. Missing values (null, NaN) and infinities become NaN, which the
    pipeline counts as unscored and selection leaves out; ``last_stats`` counts them
    (``missing_scores``, ``infinite_scores``, ``unscored``). Empty responses keep their score
    and are counted in ``last_stats["empty_responses"]``.
    """

    name: str = "column"
    source: str = "score"
    scale: float = 1.0

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "must be a non-empty string")
        require(isinstance(self.source, str) and bool(self.source), "source",
                "must name a column of the responses table")
        require(self.scale is not None and math.isfinite(self.scale), "scale",
                f"must be a finite number, got {self.scale}")
        self.last_stats: dict = {}

    def score(self, responses: pd.DataFrame) -> pd.DataFrame:
        require_columns(responses, ("prompt_id",))
        if self.source not in responses.columns:
            known = ", ".join(repr(c) for c in responses.columns)
            raise DataError(f"the responses table has no column {self.source!r} to read scores "
                            f"from (columns: {known}); set scorer.source", field=self.source)
        raw = responses[self.source]
        values = pd.to_numeric(raw, errors="coerce").astype(float).to_numpy(copy=True)
        missing = np.array([_missing(v) for v in raw], dtype=bool)
        for pid, value, bad in zip(responses["prompt_id"], raw, np.isnan(values) & ~missing,
                                   strict=True):
            if bad or isinstance(value, bool | np.bool_):
                raise DataError(f"prompt {pid!r}: {value!r:.60} in column {self.source!r} is not "
                                "a number", field=self.source)
        infinite = np.isinf(values)
        values[infinite] = np.nan
        empty = (sum(is_empty(r) for r in responses["response"])
                 if "response" in responses else 0)
        self.last_stats = {
            "responses": len(values),
            "empty_responses": int(empty),
            "missing_scores": int(missing.sum()),
            "infinite_scores": int(infinite.sum()),
            "unscored": int(np.isnan(values).sum()),
        }
        return pd.DataFrame({self.column: self.scale * values}, index=responses.index)

"""The scorer interface: a table of responses in, one score column per scorer out, with the
counts of what happened (``ScoreResult``).

The pipeline (and the ensemble, for its parts) calls ``run``: the scores and the statistics of
that call, together. A subclass implements ``score`` and records its counts (empty responses,
truncations, non-finite outputs, ...) in ``self.last_stats`` while it scores; ``run`` hands them
over with the scores. Subclasses are dataclasses whose fields are the YAML node of
``conf/scorer/<option>.yaml`` (``_target_`` names the class).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd


@dataclass
class ScoreResult:
    """``scores``: the frame of ``Scorer.score`` (aligned with the input's index). ``stats``:
    the call's numeric counts, reported by the score stage as ``score/<key>``."""

    scores: pd.DataFrame
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(kw_only=True)
class Scorer(ABC):
    """Scores every response of a table.

    ``name`` becomes the column ``score/<name>``.
    """

    # Fields that change how the work is done, not the scores (left out of the cache key).
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ()

    name: str = "reward"

    @property
    def column(self) -> str:
        return f"score/{self.name}"

    @property
    def last_stats(self) -> dict[str, Any]:
        """The counts of the latest ``score`` call (empty before the first)."""
        return self.__dict__.get("_last_stats", {})

    @last_stats.setter
    def last_stats(self, value: dict[str, Any]) -> None:
        self.__dict__["_last_stats"] = dict(value)

    def run(self, responses: pd.DataFrame) -> ScoreResult:
        """Score ``responses`` and return the scores with the call's numeric statistics."""
        self.last_stats = {}
        scores = self.score(responses)
        stats = {k: v for k, v in self.last_stats.items() if isinstance(v, int | float)}
        return ScoreResult(scores=scores, stats=stats)

    @abstractmethod
    def score(self, responses: pd.DataFrame) -> pd.DataFrame:
        """Return a frame aligned with ``responses.index``.

        ``responses`` holds one row per response with at least ``prompt_id``, ``sample_id``,
        ``prompt`` (list of chat messages), ``response`` (str), and the prompt-level columns of the
        task (``constraints`` as a JSON string, ``reference``) when the task has them. The result
        must contain ``self.column`` (float; NaN only for a response the scorer could not score,
        which the caller counts and reports) and may add detail columns named ``<name>/<what>``
        (e.g. ``rules/detail``: a JSON object of per-constraint scores).
        """

"""The scorer interface: a table of responses in, one score column per scorer out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd


@dataclass(kw_only=True)
class Scorer(ABC):
    """Scores every response of a table.

    ``name`` becomes the column ``score/<name>``. Subclasses are dataclasses whose fields are the
    YAML node of ``conf/scorer/<option>.yaml`` (``_target_`` names the class).
    """

    # Fields that change how the work is done, not the scores (left out of the cache key).
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ()

    name: str = "reward"

    @property
    def column(self) -> str:
        return f"score/{self.name}"

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

"""The task interface: where prompts come from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import pandas as pd


@dataclass(kw_only=True)
class Task(ABC):
    """Loads the prompts table: ``prompt_id`` (str), ``prompt`` (chat messages), ``split``
    (``train`` / ``heldout``), and optional ``constraints`` (JSON) and ``reference`` columns."""

    max_train: int | None = None
    max_heldout: int | None = None

    @abstractmethod
    def load(self) -> pd.DataFrame: ...

    def fingerprint(self) -> dict:
        """What identifies the prompts beyond the config (e.g. a file's content hash)."""
        return {}

    def limit(self, df: pd.DataFrame) -> pd.DataFrame:
        """Keep the first ``max_train`` / ``max_heldout`` prompts of each split, in file order."""
        parts = []
        for split, cap in (("train", self.max_train), ("heldout", self.max_heldout)):
            part = df[df["split"] == split]
            parts.append(part if cap is None else part.head(cap))
        return pd.concat(parts, ignore_index=True)

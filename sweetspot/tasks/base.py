"""The task interface: where a run's prompts come from.

A task is the prompt source of a run: ``task=<option>`` (``conf/task/<option>.yaml``), or the
data a sampler brings with its own prompts (``sampler=offline``: ``Sampler.prompt_source()``
returns a task over the file's prompts, and it replaces the configured task). The prompts stage
calls ``load()``; its cache key holds the task's config node and ``fingerprint()``.
"""

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

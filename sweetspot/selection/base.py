"""The selection interface: per-response rewards in, a table of pairs (with their scores) out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import pandas as pd

PAIR_COLUMNS = (
    "prompt_id", "chosen_sample_id", "rejected_sample_id",
    "chosen_reward", "rejected_reward",
    "margin", "weight", "route", "chosen_position", "rejected_position",
)


@dataclass
class SelectionResult:
    """Pairs plus the count of every prompt that gave no pair, by reason (none dropped silently)."""

    pairs: pd.DataFrame
    skipped: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(kw_only=True)
class SelectionStrategy(ABC):
    @abstractmethod
    def select(self, responses: pd.DataFrame) -> SelectionResult:
        """``responses``: one row per response with ``prompt_id``, ``sample_id``, ``response``
        and ``reward`` (float). Returns pairs with at least ``PAIR_COLUMNS``."""

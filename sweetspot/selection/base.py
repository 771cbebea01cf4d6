"""The selection interface: per-response rewards in, a table of pairs (with their scores) out.

Besides ``select``, a strategy declares what the pipeline must do around it (the pipeline asks
the strategy, never inspects it):

- ``needs_implicit``: it reads the ``implicit_logratio`` column, so the implicit sub-stage runs
  first, with the settings of ``implicit_settings()`` (its own cache entry);
- ``needs_model``: it scores candidate pairs with the run's model (gradients, short trainings),
  so the pipeline runs ``score_with_model`` first as its own sub-stage (cache entry keyed by
  ``model_config()``, the model, the LoRA setup and the seed) and selects with the strategy
  ``with_model_scores`` returns;
- ``keep_order``: its pairs' ``order`` is a curriculum the training loader must not shuffle;
- ``eval_system_prompt()``: the system prompt the trained policy generates under at evaluation
  (reward-augmented training conditions it on a target score), or None;
- ``needs_pilot``: it picks its pairs by a pilot (short runs of candidate strategies scored on
  held-out reward), so the pilot stage runs first with ``pilot_settings()`` (its own cache entry)
  and the full run selects with ``after_pilot(pick)``, the candidate the pilot picked.

The defaults (False, False, False, None, False) fit a plain strategy, so a new strategy is still one
class and one YAML file (``conf/selection/<option>.yaml``, whose ``/schema@_here_`` defaults line
names the class; the class's fields are the schema and its defaults).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class ImplicitSettings:
    """What the implicit sub-stage needs from a strategy (Deng et al. 2025): DPO-train a copy of
    the run's model for ``steps`` steps at ``lr`` and ``beta`` on ``subset_size`` random pairs
    drawn from what ``candidates`` selects, then score every response's log-ratio to its start.
    ``key`` is everything the sub-stage's output depends on besides the trainer, the model and the
    seed (part of its cache key)."""

    candidates: SelectionStrategy
    subset_size: int
    beta: float
    steps: int
    lr: float
    key: dict[str, Any]


@dataclass(frozen=True)
class PilotSettings:
    """What the pilot stage needs from a strategy (``selection=pilot``): train a short LoRA run
    (``steps`` steps at ``lr``, the trainer's when None) on the pairs each of ``candidates``
    (label -> strategy) selects from ``prompt_fraction`` of the train prompts, less a
    ``validation_fraction`` of those kept back; the policy answers the kept-back prompts, and
    each run's reward difference to the untrained policy (paired bootstrap CI) ranks the
    candidates; ``pick`` ("mean" or "lower": the CI's lower bound) names the ranking. ``seed``
    draws the prompts. ``key`` is everything the pilot's output depends on besides the trainer,
    loss, model, evaluation and inputs (part of its cache key)."""

    candidates: dict[str, SelectionStrategy]
    prompt_fraction: float
    validation_fraction: float
    steps: int
    lr: float | None
    seed: int
    pick: str
    key: dict[str, Any]


@dataclass(frozen=True)
class ModelInputs:
    """What the pipeline hands a strategy that ``needs_model``: the run's policy (a
    ``models.Policy``: model folder and tokenizer), the trainer config (its LoRA setup and token
    limits, so scores go through the parameters training will move) and the run's seed."""

    policy: Any
    trainer: Any
    seed: int


@dataclass(kw_only=True)
class SelectionStrategy(ABC):
    @abstractmethod
    def select(self, responses: pd.DataFrame) -> SelectionResult:
        """``responses``: one row per response with ``prompt_id``, ``sample_id``, ``response``
        and ``reward`` (float), plus ``implicit_logratio`` when ``needs_implicit``. Returns
        pairs with at least ``PAIR_COLUMNS``."""

    @property
    def needs_implicit(self) -> bool:
        """True when ``select`` reads the ``implicit_logratio`` column (the implicit sub-stage)."""
        return False

    def implicit_settings(self) -> ImplicitSettings:
        """The implicit sub-stage's settings; only asked when ``needs_implicit``."""
        raise NotImplementedError(f"{type(self).__name__} does not use implicit margins")

    @property
    def needs_model(self) -> bool:
        """True when ``select`` needs scores the run's model computes (``score_with_model``)."""
        return False

    def model_config(self) -> dict:
        """The strategy's part of the model-scoring sub-stage's cache key: every field its
        scores depend on (not those that only choose among them)."""
        raise NotImplementedError(f"{type(self).__name__} does not score with the model")

    def score_with_model(self, responses: pd.DataFrame, inputs: ModelInputs
                         ) -> tuple[pd.DataFrame, dict[str, float]]:
        """The sub-stage: a table of scored candidates (cached) and its counts."""
        raise NotImplementedError(f"{type(self).__name__} does not score with the model")

    def with_model_scores(self, scores: pd.DataFrame) -> SelectionStrategy:
        """A copy of the strategy whose ``select`` reads ``scores`` (the sub-stage's table)."""
        raise NotImplementedError(f"{type(self).__name__} does not score with the model")

    @property
    def keep_order(self) -> bool:
        """True when the pairs' ``order`` is a curriculum the training loader must not shuffle."""
        return False

    def eval_system_prompt(self) -> str | None:
        """The system prompt the trained policy generates under at evaluation, or None (plain
        generation). Scorers always see the plain conversation; the reference is never
        conditioned."""
        return None

    @property
    def needs_pilot(self) -> bool:
        """True when the pairs come from the candidate a pilot picks (the pilot stage)."""
        return False

    def pilot_settings(self) -> PilotSettings:
        """The pilot stage's settings; only asked when ``needs_pilot``."""
        raise NotImplementedError(f"{type(self).__name__} runs no pilot")

    def after_pilot(self, pick: str) -> SelectionStrategy:
        """The strategy the full run selects with, given the label of the pilot's pick (a key
        of ``pilot_settings().candidates``); only asked when ``needs_pilot``."""
        raise NotImplementedError(f"{type(self).__name__} runs no pilot")

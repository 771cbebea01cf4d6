"""Margin selection (Deng et al. 2025, "BeeS" / dual margin): keep the pairs that both an
external reward and the policy's implicit reward agree are clearly ordered.

Each margin m (external: reward difference; implicit: log-ratio difference, no beta) becomes a
probability with the clipped linear map P(m) = (clip(m, M1, M2) - M1) / (M2 - M1). With
``bounds: search`` M1 is the ``m1_*`` field (the paper's -2) and M2 the paper's appendix search:
the largest value such that at least ``search_min_count`` margins lie in [M2, max], i.e. the
``search_min_count``-th largest margin (the largest margin when there are fewer, or when that
value is not above M1; if even the largest is not, every P is 0). K sources fuse
as prod p / (prod p + prod (1 - p)); where both products are 0 (one source certain of each side)
the fused value is 0.5. ``fusion: add`` ranks by the sum of the raw margins instead (DM-ADD).

Ties: every margin at or above M2 maps to P = 1, so the top ``search_min_count`` or more pairs
of each source fuse to exactly 1 (with 200 pairs and M2 the 30th-largest margin, about 50 do).
``fusion: prob`` breaks ties of the fused value by the DM-ADD sum (larger kept first), so the
kept set does not depend on the order of the prompts in the table; only pairs equal in both
keep table order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np

from sweetspot.errors import DataError
from sweetspot.selection.base import ImplicitSettings, SelectionStrategy
from sweetspot.selection.common import (
    PairArrays,
    PairStrategy,
    data_pairs,
    position_pair,
    position_pairs,
)
from sweetspot.selection.matrix import IMPLICIT_COLUMN, ResponseMatrix
from sweetspot.selection.positions import Positions
from sweetspot.validation import at_least, one_of, positive, require

SOURCES = ("external", "implicit")
TAGS = {"external": "ex", "implicit": "im"}


def clipped_probability(m: np.ndarray, m1: float, m2: float) -> np.ndarray:
    return (np.clip(m, m1, m2) - m1) / (m2 - m1)


def search_upper(margins: np.ndarray, min_count: int) -> float:
    """The largest M2 with at least ``min_count`` margins in [M2, max]."""
    if margins.size == 0:
        return float("nan")
    if margins.size < min_count:
        return float(margins.max())
    i = margins.size - min_count
    return float(np.partition(margins, i)[i])


def fuse(probs: list[np.ndarray]) -> np.ndarray:
    yes = np.prod(probs, axis=0)
    no = np.prod([1.0 - p for p in probs], axis=0)
    total = yes + no
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, yes / np.where(total > 0, total, 1.0), 0.5)


@dataclass(kw_only=True)
class Calibration:
    """Bounds of the clipped map, per source (``_ex`` external, ``_im`` implicit)."""

    bounds: str = "search"
    m1_ex: float | None = -2.0
    m2_ex: float | None = None
    m1_im: float | None = -2.0
    m2_im: float | None = None
    search_min_count: int = 30

    def check_calibration(self, sources: list[str]) -> None:
        one_of("bounds", self.bounds, ("fixed", "search"))
        at_least("search_min_count", self.search_min_count, 1)
        for tag in [TAGS[s] for s in sources]:
            m1, m2 = getattr(self, f"m1_{tag}"), getattr(self, f"m2_{tag}")
            require(m1 is not None, f"m1_{tag}", "is required (the paper uses -2)")
            if self.bounds == "search":
                require(m2 is None, f"m2_{tag}", "is searched when bounds='search'; "
                                                 "set bounds='fixed' to fix it")
            else:
                require(m2 is not None and m2 > m1, f"m2_{tag}",
                        f"bounds='fixed' needs m2_{tag} > m1_{tag}, got {m2}")

    def calibrate(self, margins: np.ndarray, tag: str, metrics: dict[str, float]) -> np.ndarray:
        m1, m2 = getattr(self, f"m1_{tag}"), getattr(self, f"m2_{tag}")
        if self.bounds == "search":
            m2 = search_upper(margins, self.search_min_count)
            if margins.size and not m2 > m1:  # too few margins above M1: widen to the largest
                m2 = float(margins.max())
                metrics[f"m2_{tag}_widened"] = 1.0
        metrics[f"m1_{tag}"], metrics[f"m2_{tag}"] = float(m1), float(m2)
        if not m2 > m1:  # every margin is at or below M1: the map gives 0 to all of them
            return np.zeros_like(margins)
        return clipped_probability(margins, m1, m2)


@dataclass(kw_only=True)
class ImplicitOptions:
    """Settings of the implicit sub-stage (run by the pipeline, not here): DPO-train a small model
    on ``implicit_subset_size`` random candidate pairs against its SFT reference, then fill the
    ``implicit_logratio`` column (log pi - log pi_ref per response)."""

    implicit_subset_size: int = 2000
    implicit_beta: float = 0.1
    implicit_steps: int = 50  # LoRA steps (the paper: 2 epochs of full fine-tuning)
    implicit_lr: float = 5.0e-4  # a LoRA rate (the paper: 5e-7, full fine-tuning)

    def implicit_candidates(self) -> dict:
        """Which pairs the sub-stage draws its training subset from (part of its cache key)."""
        raise NotImplementedError

    def implicit_candidate_strategy(self) -> SelectionStrategy:
        """The strategy that selects those candidate pairs (as ``implicit_candidates`` names)."""
        raise NotImplementedError

    def implicit_settings(self) -> ImplicitSettings:
        return ImplicitSettings(
            candidates=self.implicit_candidate_strategy(),
            subset_size=self.implicit_subset_size,
            beta=self.implicit_beta,
            steps=self.implicit_steps,
            lr=self.implicit_lr,
            key=self.implicit_config(),
        )

    def implicit_config(self) -> dict:
        """Everything the sub-stage's output depends on besides the trainer, the model and the
        seed: the ``implicit_*`` fields and the candidate pairs (``implicit_candidates``)."""
        own = {f.name: getattr(self, f.name) for f in fields(ImplicitOptions)}
        return {**own, "candidates": self.implicit_candidates()}

    def check_implicit(self) -> None:
        at_least("implicit_subset_size", self.implicit_subset_size, 1)
        positive("implicit_beta", self.implicit_beta)
        at_least("implicit_steps", self.implicit_steps, 1)
        positive("implicit_lr", self.implicit_lr)


def implicit_margins(m: ResponseMatrix, pairs: PairArrays) -> PairArrays:
    """Add ``margin_im``; pairs whose chosen or rejected has no log-ratio are counted, not kept."""
    if m.implicit is None:
        raise DataError(f"column '{IMPLICIT_COLUMN}' is missing: the implicit sub-stage (a small "
                        "model DPO-trained on a random subset) must run before this selection",
                        field=IMPLICIT_COLUMN)
    rows = pairs.prompt_index
    pairs.columns["margin_im"] = (m.implicit[rows, pairs.chosen_col]
                                  - m.implicit[rows, pairs.rejected_col])
    return pairs.drop(~np.isnan(pairs.columns["margin_im"]), "missing_implicit")


def dual_margins(cal: Calibration, m: ResponseMatrix, pairs: PairArrays,
                 sources: list[str]) -> PairArrays:
    """Fill margin_ex / margin_im, p_ex / p_im and p_fused for the named sources."""
    pairs.columns["margin_ex"] = pairs.columns["margin"]
    if "implicit" in sources:
        pairs = implicit_margins(m, pairs)
    probs = []
    for source in sources:
        tag = TAGS[source]
        p = cal.calibrate(pairs.columns[f"margin_{tag}"], tag, pairs.metrics)
        pairs.columns[f"p_{tag}"] = p
        probs.append(p)
    pairs.columns["p_fused"] = fuse(probs)
    # Ties in p are common: every margin at or above M2 maps to p = 1, and M2 is the
    # search_min_count-th largest margin, so with a few hundred pairs tens of them fuse to
    # exactly 1. They are ranked by the DM-ADD sum of their raw margins (larger first): the
    # pair both signals place furthest above the bounds, instead of table order.
    pairs.tiebreak = sum(pairs.columns[f"margin_{TAGS[s]}"] for s in sources)
    return pairs


@dataclass(kw_only=True)
class Margin(ImplicitOptions, Calibration, PairStrategy):
    candidates: str = "positions"
    chosen: str = "max"
    rejected: str = "min"
    fusion: str = "prob"
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    top_fraction: float | None = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sources = list(self.sources)
        one_of("candidates", self.candidates, ("positions", "data"))
        one_of("fusion", self.fusion, ("prob", "add"))
        require(len(self.sources) > 0 and len(set(self.sources)) == len(self.sources)
                and set(self.sources) <= set(SOURCES), "sources",
                f"must be a non-empty list of distinct names from {list(SOURCES)}")
        if self.candidates == "positions":
            position_pair(self.chosen, self.rejected)
        self.check_calibration(self.sources)
        self.check_implicit()

    @property
    def needs_implicit(self) -> bool:
        return "implicit" in self.sources

    def implicit_candidates(self) -> dict:
        if self.candidates == "data":  # the dataset's own pair of each prompt
            return {"source": "data"}
        return {"source": "positions", "chosen": self.chosen, "rejected": self.rejected}

    def implicit_candidate_strategy(self) -> SelectionStrategy:
        if self.candidates == "data":  # every data pair, unfiltered
            return replace(self, sources=["external"], top_fraction=None, top_k=None,
                           augment=None, min_margin=None, max_pairs_per_prompt=None)
        return Positions(chosen=self.chosen, rejected=self.rejected)

    def make_pairs(self, m: ResponseMatrix) -> PairArrays:
        if self.candidates == "positions":
            pairs = position_pairs(m, self.chosen, self.rejected, self.block_rows)
        else:
            pairs = data_pairs(m)
        pairs = dual_margins(self, m, pairs, self.sources)
        if self.fusion == "prob":
            pairs.priority = pairs.columns["p_fused"]
        else:
            pairs.priority = sum(pairs.columns[f"margin_{TAGS[s]}"] for s in self.sources)
            pairs.columns["margin_add"] = pairs.priority
        return pairs

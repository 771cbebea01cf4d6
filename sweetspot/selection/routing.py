"""Margin routing (MixDPO, 2026): a pair whose margin is under ``threshold`` trains with the SFT
loss on its chosen response (``route = "sft"``), the rest with DPO; a hard switch.

``margin_source``: ``external`` (reward difference), ``implicit`` (log-ratio difference) or
``fused`` (the calibrated, fused probability of ``margin.py``; the threshold is then a
probability). With ``curriculum`` the pairs are ordered easy to hard (routing margin descending)
and ``keep_order`` tells the training loader not to shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweetspot.selection.base import SelectionStrategy
from sweetspot.selection.common import PairArrays, PairStrategy, position_pair, position_pairs
from sweetspot.selection.margin import Calibration, ImplicitOptions, dual_margins, implicit_margins
from sweetspot.selection.matrix import ResponseMatrix
from sweetspot.selection.positions import Positions
from sweetspot.validation import one_of, require

MARGIN_SOURCES = ("external", "implicit", "fused")
FUSED_SOURCES = ("external", "implicit")


@dataclass(kw_only=True)
class Routing(ImplicitOptions, Calibration, PairStrategy):
    chosen: str = "max"
    rejected: str = "min"
    threshold: float = 0.5
    margin_source: str = "external"
    curriculum: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        position_pair(self.chosen, self.rejected)
        one_of("margin_source", self.margin_source, MARGIN_SOURCES)
        require(np.isfinite(self.threshold), "threshold", "must be finite")
        self.check_calibration(list(FUSED_SOURCES) if self.margin_source == "fused" else [])
        self.check_implicit()

    @property
    def keep_order(self) -> bool:
        return self.curriculum

    @property
    def needs_implicit(self) -> bool:
        return self.margin_source != "external"

    def implicit_candidates(self) -> dict:
        return {"source": "positions", "chosen": self.chosen, "rejected": self.rejected}

    def implicit_candidate_strategy(self) -> SelectionStrategy:
        return Positions(chosen=self.chosen, rejected=self.rejected)

    def make_pairs(self, m: ResponseMatrix) -> PairArrays:
        pairs = position_pairs(m, self.chosen, self.rejected, self.block_rows)
        if self.margin_source == "external":
            key = pairs.columns["margin"]
        elif self.margin_source == "implicit":
            pairs = implicit_margins(m, pairs)
            key = pairs.columns["margin_im"]
        else:
            pairs = dual_margins(self, m, pairs, list(FUSED_SOURCES))
            key = pairs.columns["p_fused"]
        pairs.columns["route_margin"] = key
        pairs.columns["route"] = np.where(key < self.threshold, "sft", "dpo")
        pairs.priority = key
        if self.curriculum:
            pairs.order_key = key
        pairs.metrics["sft_fraction"] = float(np.mean(key < self.threshold)) if len(key) else 0.0
        return pairs

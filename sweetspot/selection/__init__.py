"""Pair selection: per-response rewards in, a table of chosen/rejected pairs out.

Strategies (one class each, one YAML each in ``conf/selection/``): ``Positions`` (sweet spot,
max/min, any two positions), ``Recipe`` (max vs worst of k random), ``Margin`` (BeeS dual
margin), ``Routing`` (MixDPO SFT/DPO routing); ``AugmentOptions`` composes with all of them.
"""

from sweetspot.selection.augment import AugmentOptions
from sweetspot.selection.base import PAIR_COLUMNS, SelectionResult, SelectionStrategy
from sweetspot.selection.common import PairArrays, PairStrategy, parse_position
from sweetspot.selection.margin import Margin
from sweetspot.selection.matrix import ResponseMatrix, build_matrix
from sweetspot.selection.positions import Positions, Recipe
from sweetspot.selection.routing import Routing

__all__ = [
    "PAIR_COLUMNS", "AugmentOptions", "Margin", "PairArrays", "PairStrategy", "Positions",
    "Recipe", "ResponseMatrix", "Routing", "SelectionResult", "SelectionStrategy",
    "build_matrix", "parse_position",
]

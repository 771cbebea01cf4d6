"""What every pair strategy shares: the position grammar, blocked per-prompt statistics,
degenerate-prompt reasons, composition (min margin, per-prompt cap, top fraction) and the table.

Everything runs on the dense matrix of ``matrix.py``. The only Python loop is over blocks of
``block_rows`` prompts, which keeps the temporaries in cache and memory bounded at 1M prompts.
"""

from __future__ import annotations

import math
import re
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import numpy as np
import pandas as pd

from sweetspot.errors import ConfigError, DataError
from sweetspot.selection.augment import AugmentOptions
from sweetspot.selection.base import SelectionResult, SelectionStrategy
from sweetspot.selection.matrix import ResponseMatrix, build_matrix
from sweetspot.validation import at_least, fraction, require

_POSITION = re.compile(r"mu(?:([+-])(\d+(?:\.\d+)?)?sigma)?")


def parse_position(field_name: str, name: str) -> float:
    """``min`` -> -inf, ``max`` -> +inf, ``mu`` -> 0, ``mu+<k>sigma`` -> k, ``mu-<k>sigma`` -> -k
    (``mu+sigma`` means k = 1). The response nearest mu + k * sigma fills the position."""
    if name == "min":
        return -math.inf
    if name == "max":
        return math.inf
    match = _POSITION.fullmatch(str(name))
    if match is None:
        raise ConfigError(field_name, f"unknown position {name!r}: use min, max, mu, "
                                      "mu+<k>sigma or mu-<k>sigma (e.g. mu-2sigma, mu+0.5sigma)")
    if match.group(1) is None:
        return 0.0
    k = float(match.group(2) or 1)
    return k if match.group(1) == "+" else -k


def position_pair(chosen: str, rejected: str) -> tuple[float, float]:
    kc, kr = parse_position("chosen", chosen), parse_position("rejected", rejected)
    require(kc > kr, "rejected", f"position {rejected!r} must rank below chosen {chosen!r} "
                                 "(order: min < mu-k sigma < mu < mu+k sigma < max)")
    return kc, kr


@dataclass
class RowStats:
    """Per prompt: scored count, population mean/std, extremes, and the column filling each
    requested position (ties -> lowest sample_id). Texts are compared later, and only where
    needed (``degenerate_conditions``)."""

    n: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    low: np.ndarray
    high: np.ndarray
    cols: list[np.ndarray]


def row_stats(rewards: np.ndarray, targets: Sequence[float], block_rows: int) -> RowStats:
    P, N = rewards.shape
    st = RowStats(n=np.zeros(P, np.int64), mu=np.zeros(P), sigma=np.zeros(P), low=np.zeros(P),
                  high=np.zeros(P), cols=[np.zeros(P, np.int64) for _ in targets])
    for s in range(0, P, block_rows):
        _block_stats(rewards, targets, st, slice(s, min(s + block_rows, P)))
    return st


def _block_stats(rewards: np.ndarray, targets: Sequence[float], st: RowStats,
                 sl: slice) -> None:
    # a read-only view of the frame's column is copied per block: NumPy's argmin/argmax copy a
    # read-only input on every call (twice as slow), a block copy costs one pass in cache
    B = np.array(rewards[sl], dtype=np.float64, copy=True if not rewards.flags.writeable else None)
    r = np.arange(B.shape[0])
    valid = ~np.isnan(B)
    n = np.count_nonzero(valid, axis=1)
    full = bool((n == B.shape[1]).all())  # no NaN: skip every masking pass (the common case)
    if full:
        zero, lo_src, hi_src = B, B, B
    else:
        zero = np.where(valid, B, 0.0)
        lo_src, hi_src = np.where(valid, B, np.inf), np.where(valid, B, -np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = zero.sum(axis=1) / n
        dev = zero - mu[:, None]
        if not full:
            dev[~valid] = 0.0
        sigma = np.sqrt(np.einsum("ij,ij->i", dev, dev) / n)  # two-pass: no cancellation
    imin, imax = lo_src.argmin(axis=1), hi_src.argmax(axis=1)
    st.n[sl], st.mu[sl], st.sigma[sl] = n, mu, sigma
    st.low[sl], st.high[sl] = lo_src[r, imin], hi_src[r, imax]
    for col, k in zip(st.cols, targets, strict=True):
        if k == -math.inf:
            col[sl] = imin
        elif k == math.inf:
            col[sl] = imax
        else:
            dist = B - (mu + k * sigma)[:, None]
            np.abs(dist, out=dist)
            if not full:
                dist[~valid] = np.inf
            col[sl] = dist.argmin(axis=1)


def first_reason(conditions: Sequence[tuple[str, np.ndarray]], size: int
                 ) -> tuple[np.ndarray, dict[str, int]]:
    """Give each prompt the first reason that applies; return the keep mask and the counts."""
    reason = np.zeros(size, np.int8)
    for i in range(len(conditions) - 1, -1, -1):
        reason[conditions[i][1]] = i + 1
    counts = np.bincount(reason, minlength=len(conditions) + 1)
    skipped = {name: int(counts[i + 1]) for i, (name, _) in enumerate(conditions) if counts[i + 1]}
    return reason == 0, skipped


@dataclass
class PairArrays:
    """Pairs as parallel arrays over the matrix (the fast path the benchmark times).

    ``priority`` ranks pairs for ``top_fraction``/``top_k``/``max_pairs_per_prompt`` (larger is
    kept first); ``tiebreak``, when set, ranks pairs of equal priority (larger first; without it,
    or when it ties too, table order decides); ``order_key``, when set, is the curriculum
    (larger trains first)."""

    prompt_index: np.ndarray
    chosen_col: np.ndarray
    rejected_col: np.ndarray
    columns: dict[str, np.ndarray]
    priority: np.ndarray
    chosen_position: str
    rejected_position: str
    skipped: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    order_key: np.ndarray | None = None
    order: np.ndarray | None = None
    tiebreak: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompt_index)

    def subset(self, keep: np.ndarray) -> PairArrays:
        return replace(
            self, prompt_index=self.prompt_index[keep], chosen_col=self.chosen_col[keep],
            rejected_col=self.rejected_col[keep], priority=self.priority[keep],
            columns={k: v[keep] for k, v in self.columns.items()},
            order_key=None if self.order_key is None else self.order_key[keep],
            tiebreak=None if self.tiebreak is None else self.tiebreak[keep],
            skipped=dict(self.skipped))

    def drop(self, keep: np.ndarray, reason: str) -> PairArrays:
        dropped = int(len(keep) - np.count_nonzero(keep))
        out = self.subset(keep)
        if dropped:
            out.skipped[reason] = out.skipped.get(reason, 0) + dropped
        return out


def make_pairs(m: ResponseMatrix, rows: np.ndarray, chosen: np.ndarray, rejected: np.ndarray,
               conditions: list[tuple[str, np.ndarray]], positions: tuple[str, str],
               extra: dict[str, np.ndarray] | None = None) -> PairArrays:
    """Keep the prompts no condition fires on; ``chosen``/``rejected``/``extra`` are per prompt."""
    keep, skipped = first_reason(conditions, len(rows))
    rc, rr = m.rewards[rows, chosen][keep], m.rewards[rows, rejected][keep]
    columns = {"chosen_reward": rc, "rejected_reward": rr, "margin": rc - rr}
    columns.update({k: v[keep] for k, v in (extra or {}).items()})
    return PairArrays(prompt_index=rows[keep], chosen_col=chosen[keep],
                      rejected_col=rejected[keep], columns=columns, priority=rc - rr,
                      chosen_position=positions[0], rejected_position=positions[1],
                      skipped=skipped)


def same_text_where(m: ResponseMatrix, pending: np.ndarray, chosen: np.ndarray,
                    rejected: np.ndarray) -> np.ndarray:
    """Per prompt, whether its chosen and rejected responses hold the same text, read only for
    the ``pending`` prompts (the others are False: an earlier reason already claims them)."""
    out = np.zeros(m.shape[0], bool)
    rows = np.flatnonzero(pending)
    out[rows] = m.same_text(rows, chosen[rows], rejected[rows])
    return out


def identical_texts(m: ResponseMatrix, pending: np.ndarray, chosen: np.ndarray,
                    rejected: np.ndarray, same: np.ndarray) -> np.ndarray:
    """Per prompt, whether all its scored responses hold one text (True when none is scored).

    Two scored picks with different texts (``same`` False) prove a prompt is not such a
    prompt, so only the ``pending`` prompts whose picks share a text, or are not both scored,
    have every text compared with their first scored one."""
    out = np.zeros(m.shape[0], bool)
    if m.texts is None:  # no texts known: all distinct
        return out
    rows = np.arange(m.shape[0])
    scored = ~np.isnan(m.rewards[rows, chosen]) & ~np.isnan(m.rewards[rows, rejected])
    check = np.flatnonzero(pending & (same | ~scored))
    if check.size:
        valid = ~np.isnan(m.rewards[check])
        first = valid.argmax(axis=1)
        local, cols = np.nonzero(valid)
        differ = ~m.same_text(check[local], cols, first[local])
        out[check] = True
        out[check[local[differ]]] = False
    return out


def degenerate_conditions(m: ResponseMatrix, st: RowStats, chosen: np.ndarray,
                          rejected: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Why a prompt gives no pair, in the order reported (the first that applies counts).
    Texts are read only for the prompts the reward conditions leave."""
    rows = np.arange(m.shape[0])
    margin = m.rewards[rows, chosen] - m.rewards[rows, rejected]
    few, flat = st.n < 2, st.high == st.low
    pending = ~(few | flat)
    same = same_text_where(m, pending, chosen, rejected)
    return [("too_few_responses", few), ("zero_sigma", flat),
            ("identical_texts", identical_texts(m, pending, chosen, rejected, same)),
            ("same_response", chosen == rejected), ("same_text", same),
            ("zero_margin", ~(margin > 0))]


def position_pairs(m: ResponseMatrix, chosen: str, rejected: str, block_rows: int) -> PairArrays:
    """One pair per prompt from two named positions (see ``parse_position``)."""
    st = row_stats(m.rewards, position_pair(chosen, rejected), block_rows)
    c, r = st.cols
    rows = np.arange(m.shape[0])
    return make_pairs(m, rows, c, r, degenerate_conditions(m, st, c, r), (chosen, rejected),
                      {"reward_mu": st.mu, "reward_sigma": st.sigma})


def data_pairs(m: ResponseMatrix) -> PairArrays:
    """The dataset's own pair per prompt (``data_chosen``/``data_rejected`` flags)."""
    if m.data_chosen is None or m.data_rejected is None:
        raise DataError("candidates='data' needs boolean columns 'data_chosen' and "
                        "'data_rejected' marking the dataset's own pair", field="data_chosen")
    rows = np.arange(m.shape[0])
    for name, flags in (("data_chosen", m.data_chosen), ("data_rejected", m.data_rejected)):
        many = np.flatnonzero(flags.sum(axis=1) > 1)
        if many.size:
            pid = m.prompt_ids[many[0]] if m.prompt_ids is not None else many[0]
            raise DataError(f"prompt {pid!r} marks several responses {name}; one pair per "
                            "prompt", field=name)
    if (m.data_chosen & m.data_rejected).any():
        raise DataError("a response is marked both data_chosen and data_rejected",
                        field="data_rejected")
    c, r = m.data_chosen.argmax(axis=1), m.data_rejected.argmax(axis=1)
    rc, rr = m.rewards[rows, c], m.rewards[rows, r]
    no_pair = ~(m.data_chosen.any(axis=1) & m.data_rejected.any(axis=1))
    unscored = np.isnan(rc) | np.isnan(rr)
    conditions = [("no_data_pair", no_pair), ("unscored_pair", unscored),
                  ("same_text", same_text_where(m, ~(no_pair | unscored), c, r))]
    return make_pairs(m, rows, c, r, conditions, ("data", "data"))


def tiebreak_of(pairs: PairArrays) -> np.ndarray:
    """The secondary ranking key (zeros when the strategy sets none: table order decides)."""
    return np.zeros(len(pairs)) if pairs.tiebreak is None else pairs.tiebreak


def _coerce_augment(value: object) -> AugmentOptions | None:
    if value is None or isinstance(value, AugmentOptions):
        return value
    if isinstance(value, Mapping):
        node = {k: v for k, v in dict(value).items() if k != "_target_"}
        known = {f.name for f in fields(AugmentOptions)}
        unknown = sorted(set(node) - known)
        require(not unknown, "augment", f"unknown field(s) {unknown}; known: {sorted(known)}")
        return AugmentOptions(**node)
    raise ConfigError("augment", f"must be a mapping or null, got {type(value).__name__}")


@dataclass(kw_only=True)
class PairStrategy(SelectionStrategy):
    """Base of every strategy: the composition fields apply after the strategy, in this order:
    ``min_margin`` (on the reward margin), ``max_pairs_per_prompt`` and ``top_k`` / ``top_fraction``
    (by the strategy's priority; ``top_k`` wins when both are set), then ``augment``."""

    # Prompts per vectorised block: memory and speed only, the pairs are the same.
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ("block_rows",)

    top_fraction: float | None = None
    top_k: int | None = None
    min_margin: float | None = None
    max_pairs_per_prompt: int | None = None
    augment: AugmentOptions | None = None
    block_rows: int = 8192

    def __post_init__(self) -> None:
        if self.top_fraction is not None:
            fraction("top_fraction", self.top_fraction)
        if self.top_k is not None:
            at_least("top_k", self.top_k, 1)
        if self.max_pairs_per_prompt is not None:
            at_least("max_pairs_per_prompt", self.max_pairs_per_prompt, 1)
        if self.min_margin is not None:
            require(math.isfinite(self.min_margin), "min_margin", "must be finite")
        at_least("block_rows", self.block_rows, 1)
        self.augment = _coerce_augment(self.augment)

    def eval_system_prompt(self) -> str | None:
        """With ``augment`` the policy learned to answer a target score: it generates under the
        top of the scale at evaluation."""
        return self.augment.eval_system_prompt() if self.augment is not None else None

    @abstractmethod
    def make_pairs(self, m: ResponseMatrix) -> PairArrays:
        """The strategy itself: candidate pairs before composition."""

    def select_matrix(self, matrix: ResponseMatrix | np.ndarray) -> PairArrays:
        """Everything but the table: strategy, composition and order, all in NumPy."""
        m = matrix if isinstance(matrix, ResponseMatrix) else ResponseMatrix.from_rewards(matrix)
        pairs = self.compose(self.make_pairs(m))
        key = pairs.order_key
        ranks = np.arange(len(pairs))
        if key is not None:
            pairs.order = np.empty(len(pairs), np.int64)
            pairs.order[np.argsort(-key, kind="stable")] = ranks
        else:
            pairs.order = ranks
        pairs.metrics.update(prompts=float(m.shape[0]), pairs=float(len(pairs)),
                             unscored_responses=float(m.unscored))
        if len(pairs):
            pairs.metrics["mean_margin"] = float(np.mean(pairs.columns["margin"]))
        return pairs

    def compose(self, pairs: PairArrays) -> PairArrays:
        if self.min_margin is not None:
            pairs = pairs.drop(pairs.columns["margin"] >= self.min_margin, "below_min_margin")
        if self.max_pairs_per_prompt is not None and len(pairs):
            idx = np.lexsort((-tiebreak_of(pairs), -pairs.priority, pairs.prompt_index))
            p = pairs.prompt_index[idx]
            start = np.maximum.accumulate(np.where(np.r_[True, p[1:] != p[:-1]],
                                                   np.arange(len(p)), 0))
            keep = np.zeros(len(p), bool)
            keep[idx] = np.arange(len(p)) - start < self.max_pairs_per_prompt
            pairs = pairs.drop(keep, "over_max_pairs_per_prompt")
        count = None
        if self.top_k is not None:
            count = self.top_k
        elif self.top_fraction is not None:
            count = math.ceil(self.top_fraction * len(pairs))
        if count is not None and count < len(pairs):
            keep = np.zeros(len(pairs), bool)
            keep[np.lexsort((-tiebreak_of(pairs), -pairs.priority))[:count]] = True
            pairs = pairs.drop(keep, "below_top_fraction")
        return pairs

    def select(self, responses: pd.DataFrame) -> SelectionResult:
        m = build_matrix(responses)
        pairs = self.select_matrix(m)
        frame = pairs_frame(m, pairs, responses)
        skipped, metrics = dict(pairs.skipped), dict(pairs.metrics)
        if self.augment is not None:
            scored = m.rewards[~np.isnan(m.rewards)]
            lo, hi = (float(scored.min()), float(scored.max())) if scored.size else (0.0, 0.0)
            frame, dropped = self.augment.apply(frame, lo, hi)
            if dropped:
                skipped["augment_score_order"] = dropped
            metrics["pairs"] = float(len(frame))
        return SelectionResult(pairs=frame, skipped=skipped, metrics=metrics)


def _is_text(dtype: object) -> bool:
    """pandas' default ``str`` dtype (Arrow storage, NaN for missing)."""
    return (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"
            and getattr(dtype, "na_value", None) is np.nan)


def _take(column: pd.Series, index: np.ndarray) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """The values at ``index`` (positions), gathering only those rows, never the whole column
    (millions of responses). Text in pandas' default ``str`` dtype stays in Arrow: the frame
    would turn the gathered Python strings back into that same dtype anyway (unless none is
    a string: then it stays an object column, as before)."""
    if _is_text(column.dtype):
        taken = column.array.take(index)
        return taken if len(taken) and not taken.isna().all() else taken.to_numpy()
    return column.take(index).to_numpy()


def pairs_frame(m: ResponseMatrix, pairs: PairArrays, responses: pd.DataFrame) -> pd.DataFrame:
    """The pairs table: ``PAIR_COLUMNS``, the texts, every computed column, sorted by ``order``."""
    rows, c, r = pairs.prompt_index, pairs.chosen_col, pairs.rejected_col
    ci, ri = m.row_index[rows, c], m.row_index[rows, r]
    cols = pairs.columns
    route = cols.get("route", np.full(len(pairs), "dpo"))
    prompt_ids = responses["prompt_id"]
    data = {
        "prompt_id": _take(prompt_ids, ci) if _is_text(prompt_ids.dtype) else m.prompt_ids[rows],
        "chosen_sample_id": m.sample_ids[rows, c],
        "rejected_sample_id": m.sample_ids[rows, r], "chosen_reward": cols["chosen_reward"],
        "rejected_reward": cols["rejected_reward"], "margin": cols["margin"],
        "weight": np.ones(len(pairs)), "route": route,
        "chosen_position": pairs.chosen_position, "rejected_position": pairs.rejected_position,
    }
    if "prompt" in responses.columns:
        data["prompt"] = _take(responses["prompt"], ci)
    data["chosen"] = _take(responses["response"], ci)
    data["rejected"] = _take(responses["response"], ri)
    data.update({k: v for k, v in cols.items() if k not in data})
    data["system_prompt"] = None
    data["order"] = pairs.order
    frame = pd.DataFrame(data)
    if len(frame) and not (np.diff(pairs.order) > 0).all():  # a curriculum reorders the pairs
        frame = frame.sort_values("order", kind="stable").reset_index(drop=True)
    return frame

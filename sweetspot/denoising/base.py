"""The denoiser interface: per-response rewards (and optional pairwise comparisons) in, a cleaned
per-response score (``reward_denoised``) and flagged comparisons out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from sweetspot.errors import DataError

RESPONSE_COLUMNS = ("prompt_id", "sample_id", "reward")
COMPARISON_COLUMNS = ("prompt_id", "i", "j", "p")


@dataclass
class DenoiseResult:
    """``responses``: the input plus ``reward_denoised``. ``comparisons``: one row per observed
    comparison (``prompt_id``, ``i``, ``j``, ``p``, ``corrupted``, ``flipped``, ...). ``skipped``:
    prompts or responses that could not be denoised, by reason (passed through, never dropped)."""

    responses: pd.DataFrame
    comparisons: pd.DataFrame
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(kw_only=True)
class Denoiser(ABC):
    """Subclasses are dataclasses whose fields are the YAML node of
    ``conf/denoiser/<option>.yaml``."""

    # Fields that change how the work is done, not the result (left out of the cache key).
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def denoise(self, responses: pd.DataFrame,
                comparisons: pd.DataFrame | None = None) -> DenoiseResult:
        """``responses``: one row per response with ``prompt_id`` (str), ``sample_id`` (int) and
        ``reward`` (float; NaN allowed, counted). ``comparisons``: optional rows ``prompt_id``,
        ``i``, ``j`` (sample ids) and ``p`` (probability, or 0/1, that i beats j)."""


def check_responses(responses: pd.DataFrame) -> None:
    """Raise DataError on a frame the denoisers cannot read; rows are numbered from 1."""
    for column in RESPONSE_COLUMNS:
        if column not in responses.columns:
            raise DataError("responses table has no column", field=column)
    duplicated = responses.duplicated(["prompt_id", "sample_id"]).to_numpy()
    if duplicated.any():
        line = int(np.flatnonzero(duplicated)[0]) + 1
        raise DataError("duplicate (prompt_id, sample_id)", line=line, field="sample_id")
    reward = pd.to_numeric(responses["reward"], errors="coerce").to_numpy(dtype=float)
    bad = np.isinf(reward) | (responses["reward"].notna().to_numpy() & np.isnan(reward))
    if bad.any():
        line = int(np.flatnonzero(bad)[0]) + 1
        raise DataError("reward is not a finite number", line=line, field="reward")


def check_comparisons(comparisons: pd.DataFrame, responses: pd.DataFrame) -> None:
    """Every comparison must name two different responses that exist, with p in [0, 1]."""
    for column in COMPARISON_COLUMNS:
        if column not in comparisons.columns:
            raise DataError("comparisons table has no column", field=column)
    known = set(zip(responses["prompt_id"], responses["sample_id"], strict=True))
    p = pd.to_numeric(comparisons["p"], errors="coerce").to_numpy(dtype=float)
    rows = zip(comparisons["prompt_id"], comparisons["i"], comparisons["j"], p, strict=True)
    for line, (prompt_id, i, j, prob) in enumerate(rows, start=1):
        for name, sample in (("i", i), ("j", j)):
            if (prompt_id, sample) not in known:
                raise DataError(f"no response {sample!r} for prompt {prompt_id!r}", line=line,
                                field=name)
        if i == j:
            raise DataError("a response compared with itself", line=line, field="j")
        if not 0.0 <= prob <= 1.0:
            raise DataError(f"p must be a probability in [0, 1], got {prob}", line=line,
                            field="p")


def mean_kendall_tau(frame: pd.DataFrame, truth: str, estimate: str) -> float:
    """Mean over prompts of Kendall's tau-b between two score columns.

    Prompts where either column has fewer than two finite values or is constant have no ranking to
    compare and are left out of the mean (NaN when no prompt has one).
    """
    taus = []
    for _, group in frame.groupby("prompt_id", sort=False):
        x, y = group[truth].to_numpy(dtype=float), group[estimate].to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 2 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
            continue
        taus.append(kendalltau(x[ok], y[ok]).statistic)
    return float(np.mean(taus)) if taus else float("nan")


def flag_metrics(flags: np.ndarray, flips: np.ndarray) -> dict[str, float]:
    """Precision and recall of the corrupted flags against the known flips."""
    hits = float(np.sum(flags & flips))
    return {"flag_precision": hits / float(flags.sum()) if flags.any() else float("nan"),
            "flag_recall": hits / float(flips.sum()) if flips.any() else float("nan")}

"""The identity denoiser: rewards pass through, no comparison is flagged."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sweetspot.denoising.base import (
    COMPARISON_COLUMNS,
    Denoiser,
    DenoiseResult,
    check_comparisons,
    check_responses,
    mean_kendall_tau,
)


@dataclass(kw_only=True)
class NoDenoiser(Denoiser):
    """``reward_denoised`` = ``reward``; the comparisons (if any) come back unflagged."""

    def denoise(self, responses: pd.DataFrame,
                comparisons: pd.DataFrame | None = None) -> DenoiseResult:
        check_responses(responses)
        out = responses.copy()
        out["reward_denoised"] = out["reward"].astype(float)
        if comparisons is None:
            comparisons = pd.DataFrame({c: [] for c in COMPARISON_COLUMNS})
        check_comparisons(comparisons, responses)
        comparisons = comparisons.copy()
        comparisons["corrupted"] = False
        comparisons["flipped"] = False
        tau = mean_kendall_tau(out, "reward", "reward_denoised")
        metrics = {"comparisons_observed": len(comparisons), "comparisons_flipped": 0,
                   "comparisons_flagged": 0, "kendall_tau_noisy": tau,
                   "kendall_tau_denoised": tau}
        return DenoiseResult(out, comparisons, metrics)

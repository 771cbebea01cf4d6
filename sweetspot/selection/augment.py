"""Reward-conditioned relabelling (Zhang et al., ICML 2025), applied after any strategy.

Each pair gives two rows: (A) unchanged, with a system prompt stating the chosen response's score
as the target; (B) chosen and rejected swapped, with the rejected score as the target. The policy
then learns what each score level looks like instead of only "higher is better", and at
generation time it is conditioned on the top of the scale (``eval_system_prompt``).

Scores: rewards are mapped linearly from ``[reward_min, reward_max]`` (default: the range observed
over every scored response of the input) onto ``[scale_min, scale_max]``, clipped, and rounded to
``decimals``; a zero-width range maps every reward to ``scale_max``. Pairs whose chosen score is
below the rejected score are dropped and counted (``augment_score_order``), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweetspot.errors import ConfigError
from sweetspot.validation import at_least, require

SWAP_NEGATED = ("margin", "margin_ex", "margin_im")


@dataclass(kw_only=True)
class AugmentOptions:
    template: str = ("You are an assistant that answers the instruction while implicitly reaching "
                     "this target score (scale {scale_min} to {scale_max}, higher is better):\n"
                     "Overall score: {score}.")
    scale_min: float = 1.0
    scale_max: float = 10.0
    reward_min: float | None = None
    reward_max: float | None = None
    decimals: int = 1

    def __post_init__(self) -> None:
        require(self.scale_max > self.scale_min, "augment.scale_max", "must be > scale_min")
        at_least("augment.decimals", self.decimals, 0)
        require((self.reward_min is None) == (self.reward_max is None), "augment.reward_max",
                "set both reward_min and reward_max, or neither (observed range)")
        if self.reward_min is not None:
            require(self.reward_max > self.reward_min, "augment.reward_max", "must be > reward_min")
        require("{score}" in self.template, "augment.template", "must contain '{score}'")
        try:
            self.system_prompt(self.scale_max)
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError("augment.template", "placeholders allowed: {score}, {scale_min}, "
                                                  f"{{scale_max}} ({err!r})") from err

    def _fmt(self, value: float) -> str:
        """Whole scores print as integers ("8"), others with ``decimals`` digits ("7.5")."""
        rounded = round(float(value), self.decimals)
        return str(int(rounded)) if rounded == int(rounded) else f"{rounded:.{self.decimals}f}"

    def system_prompt(self, score: float) -> str:
        return self.template.format(score=self._fmt(score), scale_min=self._fmt(self.scale_min),
                                    scale_max=self._fmt(self.scale_max))

    def eval_system_prompt(self) -> str:
        """The system prompt generation uses: condition on the top of the scale."""
        return self.system_prompt(self.scale_max)

    def to_scale(self, rewards: np.ndarray, observed_min: float, observed_max: float) -> np.ndarray:
        lo = observed_min if self.reward_min is None else self.reward_min
        hi = observed_max if self.reward_max is None else self.reward_max
        if hi <= lo:
            return np.full(np.shape(rewards), float(self.scale_max))
        unit = np.clip((np.asarray(rewards, float) - lo) / (hi - lo), 0.0, 1.0)
        return np.round(self.scale_min + unit * (self.scale_max - self.scale_min), self.decimals)

    def _prompts(self, scores: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(scores, return_inverse=True)
        return np.array([self.system_prompt(s) for s in unique], dtype=object)[inverse]

    def apply(self, pairs: pd.DataFrame, observed_min: float, observed_max: float
              ) -> tuple[pd.DataFrame, int]:
        """Return the two copies of every kept pair (interleaved: A then B, by ``order``) and
        the number of pairs dropped because the chosen score is below the rejected score."""
        sc = self.to_scale(pairs["chosen_reward"].to_numpy(), observed_min, observed_max)
        sr = self.to_scale(pairs["rejected_reward"].to_numpy(), observed_min, observed_max)
        keep = sc >= sr
        base = pairs[keep].reset_index(drop=True)
        sc, sr = sc[keep], sr[keep]

        a = base.copy()
        a["chosen_score"], a["rejected_score"], a["target_score"] = sc, sr, sc
        a["augment_copy"] = "original"
        a["order"] = 2 * base["order"].to_numpy()

        b = base.copy()
        for col in base.columns:
            if col.startswith("chosen") and col.replace("chosen", "rejected", 1) in base.columns:
                other = col.replace("chosen", "rejected", 1)
                b[col], b[other] = base[other].to_numpy(), base[col].to_numpy()
        for col in SWAP_NEGATED:
            if col in b.columns:
                b[col] = -base[col].to_numpy()
        b["chosen_score"], b["rejected_score"], b["target_score"] = sr, sc, sr
        b["augment_copy"] = "swapped"
        b["order"] = 2 * base["order"].to_numpy() + 1

        a["system_prompt"] = self._prompts(sc)
        b["system_prompt"] = self._prompts(sr)
        out = pd.concat([a, b], ignore_index=True).sort_values("order", kind="stable")
        out["order"] = np.arange(len(out))
        return out.reset_index(drop=True), int(len(keep) - keep.sum())

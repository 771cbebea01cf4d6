"""Influence-based selection (Zhang et al., ICLR 2026, "Towards Understanding Valuable Preference
Data for Large Language Model Alignment", arXiv 2510.13212): score each candidate pair by its
truncated influence on a validation set of held-out pairs, and keep a *medium* band of it.

What the paper establishes (abstract and summaries): the value of a pair depends on the model;
the classic influence function over-scores pairs (it rewards overfitting the validation set);
its truncated version (TIF) fixes that, and pairs of medium influence train better models than
the top ones. Two cheap scores, LossDiff and IRM, correlate positively with TIF with different
errors, and their combination selects best (50-64% of the data). The paper's body and its code
(tmlr-group/TIF_LossDiff-IRM) could not be read from this project's machines, so the formulas
below are this module's own, chosen to match those facts: the paragraph above is the paper's,
everything below is ours (``../shared/RESEARCH.md`` section 8 has the paper's claims only).

Definitions (theta_0: the run's model with fresh LoRA adapters, B = 0, so pi_0 = pi_ref; every
gradient is over the LoRA parameters; l(z) the sigmoid DPO loss of pair z with ``beta``):

- ``if_raw``: IF(z) = mean_v I_v(z), where I_v(z) = lr * <grad l(v), grad l(z)> at theta_0 is
  the first-order drop of validation pair v's loss after one SGD step of size ``lr`` on z.
- ``tif``: mean_v clip(I_v(z), -tau, tau), tau the ``tif_quantile`` quantile of |I_v(z)| over
  every (candidate, validation pair): no single validation pair can carry a candidate's score.
- ``lossdiff``: l(z; theta_0) - l(z; theta_V), theta_V = theta_0 after ``val_steps`` full-batch
  Adam steps (``val_lr``) on the validation pairs. To first order this is IF up to a factor
  (the influence of V on z equals that of z on V); training on the validation set makes it
  cheap (one forward per candidate) and adds that training's overfitting as its error.
- ``irm``: the implicit reward margin beta * [(log pi_T - log pi_0)(y_w) - (log pi_T -
  log pi_0)(y_l)] of the pair under theta_T = theta_0 after ``irm_steps`` Adam steps
  (``irm_lr``, batches of ``irm_batch_size``) on the candidate pool itself: how much training on
  the data moves the pair, whose error is the pool's difference from the validation set.
- ``lossdiff_irm``: the mean of the two scores' percentile ranks (in [0, 1]).

Validation pairs come from a held-out slice of the *train* prompts (``validation_fraction``,
drawn by a hash of the prompt id and the run's seed); those prompts give no candidate and are
never trained on. The evaluation's held-out prompts never reach selection at all.

Selection keeps the candidates whose rank in ``score`` falls in ``band``: ``medium`` (the
middle ``band_width``), ``top``, ``bottom``, or ``random`` (a seeded random ``band_width`` of the
candidates, whatever their scores); ``band_low``/``band_high`` set the band's quantiles
directly. A band of width w keeps round(w * candidates) pairs whatever its position (the ranks
left out are split below and above it in the ratio band_low : 1 - band_high), so arms of equal
width train on equally many pairs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from sweetspot.errors import DataError
from sweetspot.selection.base import ModelInputs, SelectionResult, SelectionStrategy
from sweetspot.selection.positions import Positions, mix64
from sweetspot.validation import at_least, fraction, one_of, positive, require

log = logging.getLogger(__name__)

SCORES = ("tif", "if_raw", "lossdiff", "irm", "lossdiff_irm")
BANDS = ("medium", "top", "bottom", "random")
SCORE_COLUMNS = (*SCORES, "grad_norm")
KEY_COLUMNS = ["prompt_id", "chosen_sample_id", "rejected_sample_id"]
SPLIT = "influence_split"


def prompt_draw(prompt_ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform uint64 per prompt id, stable whatever the other prompts or their order."""
    keys = pd.util.hash_array(np.asarray(prompt_ids, dtype=object), categorize=False)
    return mix64(keys.astype(np.uint64) ^ mix64(np.array([seed], np.uint64)))


def percentile_rank(values: np.ndarray) -> np.ndarray:
    """Average ranks scaled to [0, 1] (0.5 for a single value)."""
    if len(values) < 2:
        return np.full(len(values), 0.5)
    return (pd.Series(values).rank(method="average").to_numpy() - 1) / (len(values) - 1)


def band_count(width: float, n: int) -> int:
    return min(n, max(0, math.floor(width * n + 0.5)))


def band_start(lo: float, hi: float, n: int, count: int) -> int:
    """The first rank kept: the n - count ranks left out are split below and above the band in
    the ratio lo : (1 - hi) (top: all below; medium: half each, the odd one below)."""
    room = 1.0 - (hi - lo)
    if room <= 0:
        return 0
    return min(n - count, math.floor((n - count) * lo / room + 0.5))


@dataclass(kw_only=True)
class Influence(SelectionStrategy):
    """Truncated-influence selection; see the module docstring for every definition."""

    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ("batch_size",)

    candidates: list[str] = field(default_factory=lambda: ["max/mu-2sigma"])
    validation_pair: str = "max/min"
    validation_fraction: float = 0.125
    beta: float = 0.1
    lr: float = 1.0e-3
    tif_quantile: float = 0.9
    val_steps: int = 10
    val_lr: float = 5.0e-4
    irm_steps: int = 20
    irm_lr: float = 5.0e-4
    irm_batch_size: int = 8
    score: str = "tif"
    band: str = "medium"
    band_width: float = 0.5
    band_low: float | None = None
    band_high: float | None = None
    random_seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        self._scores: pd.DataFrame | None = None  # the sub-stage's table, once bound
        self.candidates = [str(c) for c in self.candidates]
        require(len(self.candidates) > 0 and len(set(self.candidates)) == len(self.candidates),
                "candidates", "must name one or more distinct '<chosen>/<rejected>' pairs")
        for pair in [*self.candidates, self.validation_pair]:
            Positions(pair=pair)  # checks the grammar and the order of the two positions
        require(0 < self.validation_fraction < 1, "validation_fraction",
                f"must be in (0, 1), got {self.validation_fraction}")
        for name in ("beta", "lr", "val_lr", "irm_lr"):
            positive(name, getattr(self, name))
        require(0 < self.tif_quantile <= 1, "tif_quantile",
                f"must be in (0, 1] (1: no truncation), got {self.tif_quantile}")
        at_least("val_steps", self.val_steps, 1)
        at_least("irm_steps", self.irm_steps, 1)
        at_least("irm_batch_size", self.irm_batch_size, 1)
        at_least("batch_size", self.batch_size, 1)
        at_least("random_seed", self.random_seed, 0)
        one_of("score", self.score, SCORES)
        one_of("band", self.band, BANDS)
        fraction("band_width", self.band_width)
        if self.band_low is not None or self.band_high is not None:
            require(self.band_low is not None and self.band_high is not None
                    and 0 <= self.band_low < self.band_high <= 1, "band_low",
                    "band_low and band_high go together, with 0 <= band_low < band_high <= 1")
            require(self.band != "random", "band", "band='random' takes band_width, "
                                                   "not band_low/band_high")

    # -- the contract: the model-scoring sub-stage ---------------------------------------------

    @property
    def needs_model(self) -> bool:
        return True

    def model_config(self) -> dict:
        """The fields the scores depend on (not the band, the score used or the random seed:
        every arm of a band sweep shares one sub-stage)."""
        skip = {"score", "band", "band_width", "band_low", "band_high", "random_seed",
                "batch_size"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def with_model_scores(self, scores: pd.DataFrame) -> Influence:
        bound = replace(self)
        bound._scores = scores
        return bound

    def split(self, responses: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(candidate prompts' responses, validation prompts' responses)."""
        ids = responses["prompt_id"].drop_duplicates().to_numpy()
        require(len(ids) >= 2, "validation_fraction",
                f"needs at least 2 train prompts to hold some out, got {len(ids)}")
        k = min(len(ids) - 1, max(1, round(self.validation_fraction * len(ids))))
        held = set(ids[np.argsort(prompt_draw(ids, seed), kind="stable")[:k]])
        is_val = responses["prompt_id"].isin(held)
        return responses[~is_val], responses[is_val]

    def candidate_pairs(self, responses: pd.DataFrame) -> SelectionResult:
        frames, skipped = [], {}
        for pair in self.candidates:
            result = Positions(pair=pair).select(responses)
            frames.append(result.pairs.assign(candidate=pair))
            prefix = "" if len(self.candidates) == 1 else f"{pair}:"
            skipped.update({f"{prefix}{k}": v for k, v in result.skipped.items()})
        return SelectionResult(pairs=pd.concat(frames, ignore_index=True), skipped=skipped)

    def score_with_model(self, responses: pd.DataFrame, inputs: ModelInputs
                         ) -> tuple[pd.DataFrame, dict[str, float]]:
        pool, held = self.split(responses, inputs.seed)
        candidates = self.candidate_pairs(pool).pairs
        validation = Positions(pair=self.validation_pair).select(held).pairs
        if validation.empty:
            raise DataError(f"no validation pair: the {held['prompt_id'].nunique()} held-out train "
                            f"prompts give no '{self.validation_pair}' pair (all rewards equal?)",
                            field="validation_pair")
        if candidates.empty:
            raise DataError("no candidate pair to score", field="candidates")
        started = time.perf_counter()
        scores = influence_scores(candidates, validation, inputs, self)
        out = pd.concat([scores.assign(**{SPLIT: "candidate"}),
                         validation.assign(**{SPLIT: "validation"})], ignore_index=True)
        counts = {"candidates": float(len(candidates)), "validation_pairs": float(len(validation)),
                  "seconds_per_candidate": (time.perf_counter() - started) / len(candidates)}
        return out, counts

    # -- selection -----------------------------------------------------------------------------

    def quantile_band(self) -> tuple[float, float]:
        if self.band_low is not None and self.band_high is not None:
            return self.band_low, self.band_high
        w = self.band_width
        return {"medium": ((1 - w) / 2, (1 + w) / 2), "top": (1 - w, 1.0),
                "bottom": (0.0, w), "random": (0.0, w)}[self.band]

    def select(self, responses: pd.DataFrame) -> SelectionResult:
        if self._scores is None:
            raise DataError("selection=influence reads the scores of its sub-stage (the run's "
                            "model scoring each candidate pair), which has not run",
                            field="influence_split")
        scores = self._scores[self._scores[SPLIT] == "candidate"]
        held_ids = set(self._scores.loc[self._scores[SPLIT] == "validation", "prompt_id"])
        pool = responses[~responses["prompt_id"].isin(held_ids)]
        result = self.candidate_pairs(pool)
        pairs = result.pairs.merge(scores[KEY_COLUMNS + ["candidate", *SCORE_COLUMNS]],
                                   on=[*KEY_COLUMNS, "candidate"], how="left")
        missing = pairs["tif"].isna()
        if missing.any():
            row = pairs[missing].iloc[0]
            raise DataError(f"candidate pair (prompt {row['prompt_id']!r}, chosen "
                            f"{row['chosen_sample_id']}, rejected {row['rejected_sample_id']}) "
                            "has no influence score: the sub-stage scored other responses",
                            field="tif")
        n = len(pairs)
        lo, hi = self.quantile_band()
        count = band_count(hi - lo, n)
        tiebreak = prompt_draw(pairs["prompt_id"].to_numpy(), self.random_seed)
        tiebreak = tiebreak ^ mix64(pairs["chosen_sample_id"].to_numpy().astype(np.uint64)
                                    * np.uint64(31) + pairs["rejected_sample_id"].to_numpy()
                                    .astype(np.uint64))
        if self.band == "random":
            ranked, start = np.argsort(tiebreak, kind="stable"), 0
        else:
            ranked = np.lexsort((tiebreak, pairs[self.score].to_numpy()))
            start = band_start(lo, hi, n, count)
        keep = np.sort(ranked[start:start + count])
        out = pairs.iloc[keep].reset_index(drop=True)
        out["order"] = np.arange(len(out))
        skipped = dict(result.skipped)
        skipped["validation_prompt"] = len(held_ids)
        if n - len(out):
            skipped["outside_band"] = n - len(out)
        metrics = {"candidates": float(n), "pairs": float(len(out)),
                   "band_low": float(lo), "band_high": float(hi)}
        if n > 2:
            for other in ("lossdiff", "irm", "lossdiff_irm", "if_raw"):
                metrics[f"spearman_tif_{other}"] = float(
                    pairs["tif"].rank().corr(pairs[other].rank()))
        if len(out):
            metrics["mean_margin"] = float(out["margin"].mean())
            metrics[f"mean_{self.score}"] = float(out[self.score].mean())
        return SelectionResult(pairs=out, skipped=skipped, metrics=metrics)


# -- the scores: gradients and short trainings through the LoRA parameters ----------------------


class LoraScorer:
    """The run's model with fresh LoRA adapters (theta_0, seeded), in eval mode (no dropout),
    able to return to theta_0: per-pair DPO gradients, batched log-probs, short Adam runs."""

    def __init__(self, inputs: ModelInputs, beta: float, batch_size: int):
        import torch

        from sweetspot.models import load_causal_lm
        from sweetspot.training.train import attach_lora

        self.torch = torch
        policy, trainer = inputs.policy, inputs.trainer
        self.tok = policy.tokenizer
        model = load_causal_lm(policy.path, policy.spec)
        model.config.use_cache = False
        torch.manual_seed(inputs.seed)
        self.model = attach_lora(model, trainer).eval()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.theta0 = [p.detach().clone() for p in self.params]
        self.beta, self.batch_size = beta, batch_size
        self.max_length, self.max_prompt_length = trainer.max_length, trainer.max_prompt_length

    def tokenize(self, pairs: pd.DataFrame) -> list:
        from sweetspot.training.data import tokenize_pairs

        return tokenize_pairs(pairs, self.tok, self.max_length, self.max_prompt_length)[0]

    def reset(self) -> None:
        with self.torch.no_grad():
            for p, p0 in zip(self.params, self.theta0, strict=True):
                p.copy_(p0)

    def _logps(self, pairs: list) -> Any:
        from sweetspot.training.data import collate
        from sweetspot.training.logprobs import completion_logps

        batch = collate(pairs, self.tok.pad_token_id)
        out = completion_logps(self.model, batch["input_ids"], batch["attention_mask"],
                               batch["completion_mask"])
        return out[: len(pairs)], out[len(pairs):]

    def logps(self, pairs: list) -> np.ndarray:
        """[P, 2] summed (chosen, rejected) log-probs at the current parameters."""
        out = np.zeros((len(pairs), 2))
        with self.torch.no_grad():
            for s in range(0, len(pairs), self.batch_size):
                c, r = self._logps(pairs[s:s + self.batch_size])
                out[s:s + len(c), 0], out[s:s + len(c), 1] = c.double().numpy(), r.double().numpy()
        return out

    def loss(self, pairs: list, ref: np.ndarray) -> Any:
        """Mean sigmoid-DPO loss of ``pairs`` against reference log-probs ``ref`` [P, 2]."""
        from sweetspot.training.losses import sigmoid_dpo

        c, r = self._logps(pairs)
        ref_t = self.torch.tensor(ref, dtype=c.dtype)
        return sigmoid_dpo((c - ref_t[:, 0]) - (r - ref_t[:, 1]), self.beta).mean()

    def grad(self, pairs: list, ref: np.ndarray) -> Any:
        """The flat gradient of the mean loss of ``pairs`` over the LoRA parameters."""
        grads = self.torch.autograd.grad(self.loss(pairs, ref), self.params, allow_unused=True)
        return self.torch.cat([(g if g is not None else self.torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, self.params, strict=True)])

    def train(self, pairs: list, ref: np.ndarray, steps: int, lr: float, batch: int,
              seed: int) -> None:
        """``steps`` Adam steps from theta_0 on batches of ``batch`` pairs (reshuffled per pass)."""
        self.reset()
        opt = self.torch.optim.Adam(self.params, lr=lr)
        rng = np.random.default_rng(seed)
        order: list[int] = []
        for _ in range(steps):
            if len(order) < min(batch, len(pairs)):
                order = list(rng.permutation(len(pairs)))
            idx, order = order[:batch], order[batch:]
            opt.zero_grad()
            self.loss([pairs[i] for i in idx], ref[idx]).backward()
            opt.step()


def dpo_loss_np(logps: np.ndarray, ref: np.ndarray, beta: float) -> np.ndarray:
    margin = (logps[:, 0] - ref[:, 0]) - (logps[:, 1] - ref[:, 1])
    return np.logaddexp(0.0, -beta * margin)


def influence_scores(candidates: pd.DataFrame, validation: pd.DataFrame, inputs: ModelInputs,
                     settings: Influence) -> pd.DataFrame:
    """``candidates`` with the score columns (see the module docstring)."""
    torch = __import__("torch")
    s = LoraScorer(inputs, settings.beta, settings.batch_size)
    cand, val = s.tokenize(candidates), s.tokenize(validation)
    ref_c, ref_v = s.logps(cand), s.logps(val)  # theta_0 = the reference (LoRA B = 0)

    g_val = torch.stack([s.grad([v], ref_v[i:i + 1]) for i, v in enumerate(val)])
    contrib = np.zeros((len(cand), len(val)))
    norms = np.zeros(len(cand))
    for i, z in enumerate(cand):
        g = s.grad([z], ref_c[i:i + 1])
        contrib[i] = settings.lr * (g_val @ g).double().numpy()
        norms[i] = float(g.norm())
        if i == 0 or (i + 1) % 32 == 0:
            log.info("influence: %d/%d candidate gradients", i + 1, len(cand))
    tau = float(np.quantile(np.abs(contrib), settings.tif_quantile))
    out = candidates.copy()
    out["if_raw"] = contrib.mean(axis=1)
    out["tif"] = np.clip(contrib, -tau, tau).mean(axis=1)
    out["grad_norm"] = norms

    s.train(val, ref_v, settings.val_steps, settings.val_lr, len(val), inputs.seed)
    out["lossdiff"] = dpo_loss_np(ref_c, ref_c, settings.beta) - dpo_loss_np(
        s.logps(cand), ref_c, settings.beta)
    s.train(cand, ref_c, settings.irm_steps, settings.irm_lr, settings.irm_batch_size,
            inputs.seed)
    lp = s.logps(cand)
    out["irm"] = settings.beta * ((lp[:, 0] - ref_c[:, 0]) - (lp[:, 1] - ref_c[:, 1]))
    out["lossdiff_irm"] = (percentile_rank(out["lossdiff"].to_numpy())
                           + percentile_rank(out["irm"].to_numpy())) / 2
    out.attrs["tif_tau"] = tau
    if not math.isfinite(tau):
        raise DataError("influence scores are not finite (NaN gradients?)", field="tif")
    return out

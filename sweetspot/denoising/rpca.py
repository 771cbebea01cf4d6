"""CURATRON-style denoising (Nguyen et al. 2024): robust PCA of each prompt's preference logits.

Per prompt, the n x n matrix M of pairwise preference logits between its responses is split into a
low-rank L and a sparse S: min ||L||_* + lam ||S||_1 s.t. L + S = M on the observed entries. Under
Bradley-Terry, M_ij = (s_i - s_j) / temperature = s 1^T - 1 s^T (scaled): skew-symmetric, rank 2.
A corrupted comparison breaks that structure at one entry pair, which S absorbs; L is the cleaned
matrix, and its row means give the cleaned score of each response.
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import pandas as pd

from sweetspot.denoising import solvers
from sweetspot.denoising.base import (
    Denoiser,
    DenoiseResult,
    check_comparisons,
    check_responses,
    flag_metrics,
    mean_kendall_tau,
)
from sweetspot.errors import DataError
from sweetspot.scoring.comparisons import comparisons_from_table
from sweetspot.validation import at_least, fraction, one_of, positive, probability

SOURCES = ("auto", "rewards", "comparisons")
DATA_SCORE_COLUMN = "score"  # the data's own scores, as the offline reader writes them


def hide_pairs(mask: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    """Unobserve all but round(keep * m) of the m observed pairs i < j (both entries of a pair)."""
    a, b = np.nonzero(np.triu(mask, 1))
    hidden = rng.choice(a.size, a.size - int(round(keep * a.size)), replace=False)
    mask = mask.copy()
    mask[a[hidden], b[hidden]] = mask[b[hidden], a[hidden]] = False
    return mask


def flip_pairs(M: np.ndarray, mask: np.ndarray, rate: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip round(rate * m) of the m observed pairs i < j: M_ij -> -M_ij and M_ji likewise.

    Returns the corrupted matrix and a boolean matrix marking the flipped entries (both halves).
    """
    a, b = np.nonzero(np.triu(mask, 1))
    chosen = rng.choice(a.size, int(round(rate * a.size)), replace=False)
    flipped = np.zeros_like(mask)
    flipped[a[chosen], b[chosen]] = flipped[b[chosen], a[chosen]] = True
    return np.where(flipped, -M, M), flipped


def _logit(p: np.ndarray, max_logit: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.clip(np.log(p) - np.log1p(-p), -max_logit, max_logit)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass
class _Prompt:
    """One prompt's matrix problem; ``rows`` index the responses frame, ``pairs`` the upper
    triangle entries observed, ``comparison_rows`` (comparisons source) map data rows to pairs."""

    rows: np.ndarray
    M: np.ndarray
    mask: np.ndarray
    flipped: np.ndarray
    center: float
    hidden: int
    comparison_rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


@dataclass(kw_only=True)
class RPCADenoiser(Denoiser):
    """Robust PCA of per-prompt preference logits; see the module docstring and RESEARCH.md 5.

    ``reward_denoised`` = mean reward of the prompt + temperature * (row mean of a matrix R), in
    logit units before the temperature; row means of a skew-symmetric rank-2 matrix
    a 1^T - 1 a^T are a_i - mean(a), so this puts them back on the reward scale and they compare
    across prompts as the rewards do. A prompt whose rewards are all missing (comparisons source)
    is centred at 0. Responses with no data (NaN reward, or in no comparison) get NaN, counted.

    R depends on the source. ``comparisons``: R = L. ``rewards``: R keeps every observed entry of
    M except those flagged (below) whose direction L reverses, and takes L only there and where
    an entry is unobserved (``observe_fraction``). A matrix built from rewards is exactly rank 2,
    so on clean, complete data nothing is replaced and ``reward_denoised`` is the reward itself,
    bit for bit: RPCA would otherwise shrink heavy-tailed rewards (moving mu and sigma, and the
    sweet-spot picks). See docs/denoising.md.

    Fields:
      source: "rewards" builds M_ij = (reward_i - reward_j) / temperature; "comparisons" builds
        M_ij = logit(p) clipped to +-max_logit from the data's comparisons, M_ji = -M_ij,
        repeated comparisons of a pair averaged, pairs never compared masked out; "auto" (the
        default) is "comparisons" when the data carry comparisons and no scores of their own,
        else "rewards" (see :meth:`resolved_source`). The source used is reported as the
        ``source_comparisons`` metric (1 or 0).
      lam: weight of ||S||_1; None means 1 / sqrt(n) (Candes et al. 2011), n per prompt.
      solver: "alm" (batched NumPy, what runs at scale), "cvxpy" (SCS reference, slow), or
        "none" (L = the observed, possibly corrupted matrix: the no-denoising control arm that
        sees exactly the same corruption).
      corrupt: for experiments, the fraction of observed pairs i < j whose sign is flipped, per
        prompt (round(corrupt * m) of its m pairs), seeded by ``seed`` and the prompt id.
      observe_fraction: for matrix-completion experiments, the fraction of observed pairs kept
        (the rest are hidden from the solver before corruption), seeded likewise.
      tol, max_iter, mu_init_scale, mu_growth, balance, chunk_size: ALM options (solvers.py).
      scs_eps: SCS accuracy for the cvxpy solver.
      flag_tol: a comparison is flagged ``corrupted`` when |S_ij| > flag_tol * max |M_ij| of its
        prompt (relative, so it does not depend on the reward scale).
    """

    # Each prompt's problem is solved on its own (per-instance stopping): the chunk bounds memory.
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ("chunk_size",)

    source: str = "auto"
    temperature: float = 1.0
    max_logit: float = 5.0
    lam: Optional[float] = None  # noqa: UP045 (OmegaConf reads Optional)
    solver: str = "alm"
    corrupt: float = 0.0
    observe_fraction: float = 1.0
    seed: int = 0
    tol: float = solvers.TOL
    max_iter: int = solvers.MAX_ITER
    mu_init_scale: float = solvers.MU_INIT_SCALE
    mu_growth: float = solvers.MU_GROWTH
    balance: float = solvers.BALANCE
    chunk_size: int = solvers.CHUNK_SIZE
    scs_eps: float = solvers.SCS_EPS
    flag_tol: float = 0.02

    def __post_init__(self) -> None:
        one_of("source", self.source, SOURCES)
        one_of("solver", self.solver, (*solvers.SOLVERS, "none"))
        positive("temperature", self.temperature)
        positive("max_logit", self.max_logit)
        if self.lam is not None:
            positive("lam", self.lam)
        probability("corrupt", self.corrupt)
        fraction("observe_fraction", self.observe_fraction)
        positive("tol", self.tol)
        at_least("max_iter", self.max_iter, 1)
        positive("mu_init_scale", self.mu_init_scale)
        at_least("mu_growth", self.mu_growth, 1.0)
        at_least("balance", self.balance, 1.0)
        at_least("chunk_size", self.chunk_size, 1)
        positive("scs_eps", self.scs_eps)
        positive("flag_tol", self.flag_tol)

    def solve(self, M: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """Solve a batch of equal-n problems with this config's solver and options."""
        lam = self.lam if self.lam is not None else 1.0 / np.sqrt(M.shape[-1])
        if self.solver == "none":  # the control arm: same corruption, nothing removed
            batch = M.shape[0]
            info = {"objective": np.full(batch, np.nan), "residual": np.zeros(batch),
                    "iterations": np.zeros(batch, dtype=int), "converged": np.ones(batch, bool)}
            return np.where(mask, M, 0.0), np.zeros_like(M), info
        if self.solver == "cvxpy":
            return solvers.solve_cvxpy(M, mask, lam, eps=self.scs_eps)
        return solvers.solve_alm(M, mask, lam, tol=self.tol, max_iter=self.max_iter,
                                 mu_init_scale=self.mu_init_scale, mu_growth=self.mu_growth,
                                 balance=self.balance, chunk_size=self.chunk_size)

    @staticmethod
    def data_comparisons(responses: pd.DataFrame,
                         comparisons: pd.DataFrame | None) -> pd.DataFrame | None:
        """The data's comparisons: the table given (the pipeline passes the offline sampler's),
        else those the responses table lists in its ``comparisons`` column (the offline reader
        writes one when the file has comparisons); None when there are none."""
        if comparisons is None:
            comparisons = comparisons_from_table(responses)
        return comparisons if len(comparisons) else None

    def resolved_source(self, responses: pd.DataFrame,
                        comparisons: pd.DataFrame | None) -> str:
        """The source this call uses. ``auto``: "comparisons" when the data carry comparisons
        (:meth:`data_comparisons`) and no score of their own (no number in the ``score``
        column); then the reward is a Bradley-Terry fit of those comparisons (``scorer=data``),
        a rank-2 matrix RPCA cannot clean, and the comparisons are what holds the wrong labels
        (CURATRON). Data with scores (UltraFeedback) and computed rewards (built-in tasks, no
        comparisons) use "rewards". The choice is per run, never per prompt."""
        if self.source != "auto":
            return self.source
        if self.data_comparisons(responses, comparisons) is None:
            return "rewards"
        if DATA_SCORE_COLUMN in responses.columns:
            scores = pd.to_numeric(responses[DATA_SCORE_COLUMN], errors="coerce")
            if np.isfinite(scores.to_numpy(dtype=float)).any():
                return "rewards"
        return "comparisons"

    def denoise(self, responses: pd.DataFrame,
                comparisons: pd.DataFrame | None = None) -> DenoiseResult:
        check_responses(responses)
        source = self.resolved_source(responses, comparisons)
        if source == "comparisons":
            comparisons = self.data_comparisons(responses, comparisons)
            if comparisons is None:
                raise DataError("denoiser source 'comparisons' needs the data's comparisons "
                                "(a comparisons table or the responses' 'comparisons' column)",
                                field="comparisons")
            check_comparisons(comparisons, responses)
        else:
            comparisons = None
        out = responses.reset_index(drop=True)
        reward = out["reward"].to_numpy(dtype=float)
        skipped: Counter = Counter()
        by_prompt = (comparisons.reset_index(drop=True).groupby("prompt_id", sort=False).indices
                     if source == "comparisons" else {})
        problems = []
        for prompt_id, rows in out.groupby("prompt_id", sort=False).indices.items():
            problem = self._build(prompt_id, rows, out, reward, comparisons, by_prompt, skipped,
                                  source)
            if problem is not None:
                problems.append(problem)

        denoised = np.full(len(out), np.nan)
        noisy = np.full(len(out), np.nan)
        tables, iterations, not_converged = [], [], 0
        groups = defaultdict(list)
        for problem in problems:
            groups[problem.M.shape[0]].append(problem)
        for group in groups.values():
            M = np.stack([p.M for p in group])
            mask = np.stack([p.mask for p in group])
            L, S, info = self.solve(M, mask)
            L = 0.5 * (L - np.swapaxes(L, -1, -2))  # exact skew-symmetry, up to rounding
            iterations.extend(info["iterations"])
            not_converged += int((~info["converged"]).sum())
            for b, p in enumerate(group):
                denoised[p.rows] = self._scores(p, L[b], S[b], reward, source)
                observed = p.mask & ~np.eye(len(p.rows), dtype=bool)
                row_mean = np.where(observed, p.M, 0).sum(1) / np.maximum(observed.sum(1), 1)
                noisy[p.rows] = p.center + self.temperature * row_mean
                tables.append(self._table(prompt_id=out["prompt_id"].iat[p.rows[0]], p=p,
                                          L=L[b], S=S[b], out=out, comparisons=comparisons))

        out["reward_denoised"] = denoised
        table = (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
            {c: [] for c in ("prompt_id", "i", "j", "p", "p_denoised", "residual", "corrupted",
                             "flipped")}))
        scored = out.assign(reward_noisy=noisy)
        metrics = {
            "comparisons_observed": len(table),
            "comparisons_hidden": int(sum(p.hidden for p in problems)),
            "comparisons_flipped": int(table["flipped"].sum()),
            "comparisons_flagged": int(table["corrupted"].sum()),
            "kendall_tau_noisy": mean_kendall_tau(scored, "reward", "reward_noisy"),
            "kendall_tau_denoised": mean_kendall_tau(scored, "reward", "reward_denoised"),
            "prompts_denoised": len(problems),
            "solver_iterations_mean": float(np.mean(iterations)) if iterations else 0.0,
            "solver_not_converged": not_converged,
            "source_comparisons": int(source == "comparisons"),
        }
        if self.corrupt > 0:
            metrics |= flag_metrics(table["corrupted"].to_numpy(bool),
                                    table["flipped"].to_numpy(bool))
        return DenoiseResult(out, table, metrics, dict(skipped))

    def _flags(self, p: _Prompt, S: np.ndarray) -> np.ndarray:
        """Comparisons whose sparse part is large: |S_ij| > flag_tol * max |M_ij| of the prompt."""
        return np.abs(S) > self.flag_tol * np.abs(p.M).max()

    def _scores(self, p: _Prompt, L: np.ndarray, S: np.ndarray, reward: np.ndarray,
                source: str) -> np.ndarray:
        """``reward_denoised`` of one prompt's responses (see the class docstring)."""
        if source == "comparisons":
            return p.center + self.temperature * L.mean(1)
        # rewards: keep every observed comparison the low-rank part does not contradict; take
        # L only where the data are missing or flagged with the opposite direction. On clean,
        # complete data nothing is replaced, so the rewards come back unchanged (RPCA's
        # shrinkage of heavy-tailed but consistent rewards is not a correction).
        flag = self._flags(p, S)
        contradicted = (flag | flag.T) & p.mask & (L * p.M < 0)
        use_low = (~p.mask | contradicted) & ~np.eye(len(p.rows), dtype=bool)
        repaired = np.where(use_low, L, p.M)
        scores = p.center + self.temperature * repaired.mean(1)
        s = reward[p.rows] / self.temperature
        untouched = (repaired == s[:, None] - s[None, :]).all(1)  # the row is the data's own
        scores[untouched] = reward[p.rows][untouched]  # exactly (rounding could break ties)
        return scores

    def _build(self, prompt_id, rows, out, reward, comparisons, by_prompt, skipped, source):
        """One prompt's (M, mask) after hiding and corruption; None (counted) when it has none."""
        rng = np.random.default_rng([self.seed, zlib.crc32(str(prompt_id).encode())])
        pairs = None
        if source == "rewards":
            has = np.isfinite(reward[rows])
            skipped["responses_without_reward"] += int((~has).sum())
            rows = rows[has]
            s = reward[rows] / self.temperature
            M = s[:, None] - s[None, :]
        else:
            data = by_prompt.get(prompt_id, np.array([], dtype=int))
            ids = out["sample_id"].to_numpy()[rows]
            frame = comparisons.iloc[data]
            compared = np.isin(ids, np.concatenate([frame["i"], frame["j"]]))
            skipped["responses_without_comparison"] += int((~compared).sum())
            rows, ids = rows[compared], ids[compared]
            position = {sample: k for k, sample in enumerate(ids)}
            i = np.array([position[x] for x in frame["i"]], dtype=int)
            j = np.array([position[x] for x in frame["j"]], dtype=int)
            a, b, sign = np.minimum(i, j), np.maximum(i, j), np.where(i < j, 1.0, -1.0)
            logit = sign * _logit(frame["p"].to_numpy(dtype=float), self.max_logit)
            n = len(rows)
            total, count = np.zeros((n, n)), np.zeros((n, n))
            np.add.at(total, (a, b), logit)
            np.add.at(count, (a, b), 1.0)
            upper = total / np.maximum(count, 1.0)
            M = upper - upper.T
            pairs = (data, a, b, sign)
        n = len(rows)
        if n < 2:
            skipped["prompts_fewer_than_two_responses"] += 1
            return None
        if pairs is None:
            mask = np.ones((n, n), dtype=bool)
        else:
            mask = np.eye(n, dtype=bool)
            mask[pairs[1], pairs[2]] = mask[pairs[2], pairs[1]] = True
        observed = int(np.triu(mask, 1).sum())
        if self.observe_fraction < 1:
            mask = hide_pairs(mask, self.observe_fraction, rng)
        hidden = observed - int(np.triu(mask, 1).sum())
        M = np.where(mask, M, 0.0)
        M, flipped = flip_pairs(M, mask, self.corrupt, rng)
        finite = reward[rows][np.isfinite(reward[rows])]
        center = float(finite.mean()) if finite.size else 0.0
        return _Prompt(rows, M, mask, flipped, center, hidden, pairs)

    def _table(self, prompt_id, p: _Prompt, L, S, out, comparisons) -> pd.DataFrame:
        """The observed comparisons of one prompt with their flags."""
        flag = self._flags(p, S)
        ids = out["sample_id"].to_numpy()[p.rows]
        if p.comparison_rows is None:
            a, b = np.nonzero(np.triu(p.mask, 1))
            return pd.DataFrame({"prompt_id": prompt_id, "i": ids[a], "j": ids[b],
                                 "p": _sigmoid(p.M[a, b]), "p_denoised": _sigmoid(L[a, b]),
                                 "residual": S[a, b], "corrupted": flag[a, b],
                                 "flipped": p.flipped[a, b]})
        data, a, b, sign = p.comparison_rows
        kept = p.mask[a, b]
        data, a, b, sign = data[kept], a[kept], b[kept], sign[kept]
        table = comparisons.iloc[data].reset_index(drop=True)
        flipped = p.flipped[a, b]
        given = table["p"].to_numpy(dtype=float)
        table["p"] = np.where(flipped, 1.0 - given, given)
        table["p_denoised"] = _sigmoid(sign * L[a, b])
        table["residual"] = sign * S[a, b]
        table["corrupted"] = flag[a, b]
        table["flipped"] = flipped
        return table

"""The reward preference data already has: its scores, or a Bradley-Terry fit of its comparisons.

Public preference data rarely comes with one score per response. Often it has only pairwise
labels (human or AI: "A beats B"), some pairs never compared, some labels wrong: CURATRON's
setting (Nguyen et al. 2024). Selection ranks one reward per response, so the comparisons are
turned into one: per prompt, the maximum a posteriori Bradley-Terry strengths

    s = argmax_s  sum_k [p_k log sigmoid(s_i - s_j) + (1 - p_k) log sigmoid(s_j - s_i)]
                  - prior / 2 * ||s||^2

over the prompt's comparisons k = (i, j, p) (p: the probability, or 0/1 label, that i beats j;
a pair compared several times counts each time). Without the Gaussian prior (precision
``prior``) the maximum does not exist when one response wins all its comparisons (perfect
separation: its strength runs to infinity), which is the usual case with a few binary labels per
prompt. With it the objective is strictly concave, so the fit exists, is unique, sums to 0 over
the prompt's compared responses (the likelihood is shift-invariant and the prior is smallest at
mean 0), and Newton's method finds it. Strengths are in logit units: s_i - s_j is the fitted
log-odds that i beats j. A response in none of its prompt's comparisons has no strength: NaN,
counted (``not_compared``) and never paired.

Which reward selection ranks (documented in docs/your_data.md):
  * ``denoiser=none``: this Bradley-Terry fit.
  * ``denoiser=rpca`` with ``denoiser.source=comparisons``: the row means of the low-rank part of
    the comparisons' logit matrix (CURATRON), centred on the prompt's mean fit, which is 0.
  * ``denoiser=rpca`` with ``denoiser.source=rewards``: RPCA of the matrix built from this fit.

``source: auto`` (what ``sampler=offline`` selects, see conf/sampler/offline.yaml) uses the data's
own scores (the responses table's ``score`` column, which the offline reader writes only when
the file has scores) when at least one is a number, else the comparisons. The choice is per run,
never per prompt (scores and logits are not on one scale), and is reported as
``score/from_comparisons`` (1 or 0).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweetspot.errors import DataError
from sweetspot.scoring.base import Scorer
from sweetspot.scoring.column import ColumnScorer
from sweetspot.validation import at_least, one_of, positive, require

SOURCES = ("auto", "scores", "comparisons")
COMPARISONS_COLUMN = "comparisons"  # the responses table's: [[j, p], ...] per response i


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _objective(wins: np.ndarray, s: np.ndarray, prior: float) -> np.ndarray:
    d = s[:, :, None] - s[:, None, :]
    return (wins * _log_sigmoid(d)).sum((1, 2)) - 0.5 * prior * (s * s).sum(1)


def fit_bradley_terry(
    wins: np.ndarray, prior: float, tol: float = 1e-10, max_iter: int = 100
) -> np.ndarray:
    """MAP Bradley-Terry strengths of a batch of equal-size problems.

    ``wins[b, i, j]``: the total weight of "i beats j" in problem b (a comparison with
    probability p adds p to ``wins[i, j]`` and 1 - p to ``wins[j, i]``). Returns ``s[b, i]``.
    Damped Newton ascent (backtracking on the objective) from s = 0; it stops when every
    problem's largest gradient entry is below ``tol``. The objective is strictly concave for
    ``prior > 0``, so the answer does not depend on the start or on the batch.
    """
    wins = np.asarray(wins, dtype=float)
    batch, n, _ = wins.shape
    total = wins + np.swapaxes(wins, 1, 2)
    s = np.zeros((batch, n))
    eye = np.eye(n)
    for _ in range(max_iter):
        sig = _sigmoid(s[:, :, None] - s[:, None, :])
        grad = (wins - total * sig).sum(2) - prior * s
        if np.abs(grad).max(initial=0.0) < tol:
            break
        curv = total * sig * (1.0 - sig)
        neg_hess = curv.sum(2)[:, :, None] * eye - curv + prior * eye
        step = np.linalg.solve(neg_hess, grad[:, :, None])[:, :, 0]
        now = _objective(wins, s, prior)
        slope = (grad * step).sum(1)
        t = np.ones(batch)
        for _ in range(40):  # backtracking (Armijo); Newton's full step is nearly always taken
            ok = _objective(wins, s + t[:, None] * step, prior) >= now + 1e-4 * t * slope
            if ok.all():
                break
            t = np.where(ok, t, 0.5 * t)
        s = s + t[:, None] * step
    return s


def bradley_terry_rewards(
    responses: pd.DataFrame, comparisons: pd.DataFrame, prior: float, tol: float = 1e-10,
    max_iter: int = 100,
) -> tuple[np.ndarray, dict[str, int]]:
    """One strength per row of ``responses`` (NaN where the response is in no comparison).

    ``comparisons``: ``prompt_id, i, j, p`` with i, j sample ids of ``responses``. A comparison
    that names a response missing from ``responses`` is a DataError naming its row (1-based).
    """
    out = np.full(len(responses), np.nan)
    pids = responses["prompt_id"].astype(str).to_numpy()
    sids = responses["sample_id"].to_numpy()
    where = {(p, int(k)): row for row, (p, k) in enumerate(zip(pids, sids, strict=True))}
    by_prompt: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    rows = zip(comparisons["prompt_id"].astype(str), comparisons["i"], comparisons["j"],
               comparisons["p"].astype(float), strict=True)
    for line, (pid, i, j, p) in enumerate(rows, start=1):
        for name, sample in (("i", i), ("j", j)):
            if (pid, int(sample)) not in where:
                raise DataError(f"no response {sample!r} for prompt {pid!r}", line=line,
                                field=f"comparisons.{name}")
        if not 0.0 <= p <= 1.0:
            raise DataError(f"p must be a probability in [0, 1], got {p}", line=line,
                            field="comparisons.p")
        by_prompt[pid].append((where[pid, int(i)], where[pid, int(j)], p))
    groups: dict[int, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for items in by_prompt.values():
        members = sorted({r for a, b, _ in items for r in (a, b)})
        index = {r: k for k, r in enumerate(members)}
        wins = np.zeros((len(members), len(members)))
        for a, b, p in items:
            wins[index[a], index[b]] += p
            wins[index[b], index[a]] += 1.0 - p
        groups[len(members)].append((np.array(members), wins))
    for problems in groups.values():
        strengths = fit_bradley_terry(np.stack([w for _, w in problems]), prior, tol, max_iter)
        for (members, _), s in zip(problems, strengths, strict=True):
            out[members] = s
    stats = {
        "prompts_fitted": len(by_prompt),
        "comparisons": len(comparisons),
        "not_compared": int(np.isnan(out).sum()),
    }
    return out, stats


@dataclass(kw_only=True)
class DataScorer(Scorer):
    """``score/<name>``: the data's own reward (see the module docstring).

    Fields:
      source: ``auto`` (scores when the table has a numeric ``score_column``, else the
        comparisons), ``scores`` (always the column; ``scorer=column`` with a scale is the
        general form), ``comparisons`` (always the Bradley-Terry fit, even when scores exist).
      score_column: the column holding the data's scores (the offline reader writes ``score``).
      prior: precision of the Gaussian prior on each strength (> 0: the fit then exists under
        perfect separation). 0.1 is a weak prior (sd 3.2 logits): one unanimous comparison gives
        a margin of 2.1 logits (fitted P(win) = 0.89).
      tol, max_iter: Newton's stopping rule (largest gradient entry) and iteration cap.

    It scores only the responses the comparisons name; it cannot score new text, so it is no
    evaluation scorer (set ``evaluation.scorer``).
    """

    name: str = "data"
    source: str = "auto"
    score_column: str = "score"
    prior: float = 0.1
    tol: float = 1e-10
    max_iter: int = 100

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "must be a non-empty string")
        one_of("source", self.source, SOURCES)
        require(bool(self.score_column), "score_column", "must name a column")
        positive("prior", self.prior)
        positive("tol", self.tol)
        at_least("max_iter", self.max_iter, 1)
        self.last_stats: dict = {}

    def uses_scores(self, responses: pd.DataFrame) -> bool:
        """Whether this run's reward is the score column (``auto``: it has a number)."""
        if self.source != "auto":
            return self.source == "scores"
        if self.score_column not in responses.columns:
            return False
        values = pd.to_numeric(responses[self.score_column], errors="coerce").to_numpy(float)
        return bool(np.isfinite(values).any())

    def score(self, responses: pd.DataFrame) -> pd.DataFrame:
        """Scores from the column, or strengths fitted to the comparisons in the table's
        ``comparisons`` column (see :func:`comparisons_from_table`)."""
        if self.uses_scores(responses):
            column = ColumnScorer(name=self.name, source=self.score_column)
            result = column.score(responses)
            self.last_stats = {**column.last_stats, "from_comparisons": 0}
            return result
        comparisons = comparisons_from_table(responses)
        if comparisons.empty:
            wanted = ("pairwise comparisons" if self.source == "comparisons"
                      else f"scores (column {self.score_column!r}) or pairwise comparisons")
            raise DataError(
                f"scorer {self.name!r} reads the data's own reward, and these responses have no "
                f"{wanted}; give the file a 'scores' or 'comparisons' field (or use a pair "
                "layout), or choose a scorer that computes rewards (scorer=reward_model, ...)",
                field=COMPARISONS_COLUMN if self.source == "comparisons" else self.score_column,
            )
        values, stats = bradley_terry_rewards(responses, comparisons, self.prior, self.tol,
                                              self.max_iter)
        self.last_stats = {"responses": len(values), **stats, "from_comparisons": 1,
                           "unscored": int(np.isnan(values).sum())}
        return pd.DataFrame({self.column: values}, index=responses.index)


def comparisons_from_table(responses: pd.DataFrame) -> pd.DataFrame:
    """``prompt_id, i, j, p`` from the responses table's ``comparisons`` column.

    The offline reader writes each comparison (i, j, p) of the file once, in response i's row,
    as ``[j, p]`` (Parquet stores both as doubles). A table without the column has none.
    """
    rows: list[tuple[str, int, int, float]] = []
    if COMPARISONS_COLUMN not in responses.columns:
        return pd.DataFrame(rows, columns=["prompt_id", "i", "j", "p"])
    cells = zip(responses["prompt_id"], responses["sample_id"], responses[COMPARISONS_COLUMN],
                strict=True)
    for line, (pid, i, cell) in enumerate(cells, start=1):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            continue
        for item in list(cell):
            item = list(item)
            if len(item) != 2 or not float(item[0]).is_integer():
                raise DataError(f"expected [j, p], got {item!r:.60}", line=line,
                                field=COMPARISONS_COLUMN)
            rows.append((str(pid), int(i), int(item[0]), float(item[1])))
    return pd.DataFrame(rows, columns=["prompt_id", "i", "j", "p"])

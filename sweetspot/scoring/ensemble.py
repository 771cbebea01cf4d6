"""Several scorers in one: each component normalised, then a weighted sum.

score/<name> = sum_i weights[i] * normalise(score/<component i>)

Normalisations (``normalize``), each computed over the rows that have a score (NaN stays NaN):

- ``prompt_z``: per prompt, (x - mu) / sigma with the population sigma (ddof = 0) of that
  prompt's responses, what selection compares. A prompt whose responses all score the same
  (sigma = 0, or below 1e-12 * max(1, |mu|), which is float round-off) gets 0 for all of them:
  it carries no preference signal, and 0 keeps the other components' spread intact. A prompt
  with one response has sigma = 0, so it gets 0 too.
- ``global_z``: the same over the whole table (sigma = 0 -> every row 0).
- ``rank``: per prompt, the average rank of x among the prompt's scored responses mapped to
  [0, 1]: (rank - 1) / (n - 1); ties share their mean rank; a prompt with one scored response
  gets 0.5. Robust to outliers and to scorers on very different scales.
- ``none``: raw scores.

A row that any component with a non-zero weight could not score (NaN) is NaN in the ensemble:
the pipeline counts it as unscored instead of ranking it on a partial sum. Every component keeps
its own columns (``score/<component>`` and its detail columns) beside the ensemble's, and the
normalised value of each is ``<name>/<component>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sweetspot.errors import ConfigError, SweetspotError
from sweetspot.scoring.base import Scorer
from sweetspot.scoring.reward_model import is_empty, require_columns
from sweetspot.validation import one_of, require

NORMALIZATIONS = ("prompt_z", "global_z", "rank", "none")


def _flat_sigma(sigma: np.ndarray, mu: np.ndarray) -> np.ndarray:
    return ~(sigma > 1e-12 * np.maximum(1.0, np.abs(mu)))


def normalise(values: np.ndarray, groups: np.ndarray, how: str) -> tuple[np.ndarray, int]:
    """Normalised values (NaN where ``values`` is NaN) and the number of groups whose sigma is
    0 (z modes; 0 otherwise). ``groups`` labels each row's prompt."""
    values = np.asarray(values, dtype=float)
    if how == "none":
        return values.copy(), 0
    keys = np.zeros(len(values), dtype=int) if how == "global_z" else groups
    series = pd.Series(values)
    by = series.groupby(keys, sort=False)
    if how == "rank":
        rank = by.rank(method="average").to_numpy()
        n = by.transform("count").to_numpy(dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(n > 1, (rank - 1) / (n - 1), 0.5)
        return np.where(np.isnan(values), np.nan, out), 0
    mu = by.transform("mean").to_numpy()
    sigma = np.sqrt(((series - mu) ** 2).groupby(keys, sort=False).transform("mean").to_numpy())
    flat = _flat_sigma(sigma, mu)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(flat, 0.0, (values - mu) / np.where(flat, 1.0, sigma))
    scored = ~np.isnan(values)
    flat_groups = int(pd.Series(flat[scored]).groupby(np.asarray(keys)[scored]).all().sum())
    return np.where(scored, out, np.nan), flat_groups


def _build_component(node: Any) -> Any:
    """A scorer from a config node: a dict or DictConfig with ``_target_``; or a scorer that
    Hydra's recursive instantiation already built (a dataclass inside a list comes back as a
    structured DictConfig without ``_target_``: rebuilt from it)."""
    if OmegaConf.is_config(node) and "_target_" not in node:
        kind = OmegaConf.get_type(node)
        if isinstance(kind, type) and issubclass(kind, Scorer):
            return OmegaConf.to_object(node)
    if not (OmegaConf.is_config(node) or isinstance(node, dict)) or "_target_" not in node:
        raise ConfigError("", "must be a scorer node with a _target_ "
                          "(e.g. sweetspot.scoring.rules.RulesScorer) and its fields")
    return instantiate(node, _convert_="all")


def _default_components() -> list[dict[str, Any]]:
    return [
        {"_target_": "sweetspot.scoring.rules.RulesScorer", "name": "rules"},
        {"_target_": "sweetspot.scoring.column.ColumnScorer", "name": "length",
         "source": "num_tokens"},
    ]


@dataclass(kw_only=True)
class EnsembleScorer(Scorer):
    """A weighted sum of normalised scorers (see the module docstring for the normalisations).

    ``scorers``: config nodes, each a ``_target_`` and its fields, instantiated with Hydra here
    (scorers that Hydra already built are kept); their names must differ from each other and
    from the ensemble's. ``weights``: one finite weight per scorer, negative allowed (a penalty),
    not all zero. The default is the rules reward with a light length penalty (the sampler's
    ``num_tokens``), both per-prompt z-scores.
    """

    name: str = "ensemble"
    scorers: list[dict[str, Any]] = field(default_factory=_default_components)
    weights: list[float] = field(default_factory=lambda: [1.0, -0.25])
    normalize: str = "prompt_z"

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "must be a non-empty string")
        one_of("normalize", self.normalize, NORMALIZATIONS)
        require(len(self.scorers) > 0, "scorers", "must name at least one scorer")
        require(len(self.weights) == len(self.scorers), "weights",
                f"must have one weight per scorer: {len(self.weights)} weights, "
                f"{len(self.scorers)} scorers")
        for i, w in enumerate(self.weights):
            require(w is not None and math.isfinite(w), f"weights[{i}]",
                    f"must be a finite number, got {w}")
        require(any(w != 0 for w in self.weights), "weights", "must not all be 0")
        self.parts: list[Scorer] = []
        for i, node in enumerate(self.scorers):
            if isinstance(node, Scorer):
                part = node
            else:
                try:
                    part = _build_component(node)
                except ConfigError as e:
                    where = f"scorers[{i}]" + (f".{e.field}" if e.field else "")
                    raise ConfigError(where, e.message) from e
                except Exception as e:  # Hydra wraps a component's ConfigError in its own type
                    inner = e.__cause__
                    if isinstance(inner, ConfigError):
                        raise ConfigError(f"scorers[{i}].{inner.field}", inner.message) from e
                    lines = [x.strip() for x in str(inner or e).splitlines() if x.strip()]
                    reason = " ".join(lines[:2]) or type(e).__name__
                    raise ConfigError(f"scorers[{i}]", f"cannot instantiate "
                                      f"{node.get('_target_')!r}: {reason}") from e
            require(isinstance(part, Scorer), f"scorers[{i}]",
                    f"must be a scorer, got {type(part).__name__}")
            self.parts.append(part)
        names = [p.name for p in self.parts]
        for i, n in enumerate(names):
            require(n != self.name, f"scorers[{i}].name",
                    f"must differ from the ensemble's own name {self.name!r}")
            require(n not in names[:i], f"scorers[{i}].name",
                    f"{n!r} is used by another component; give each a distinct name")
        self.last_stats: dict = {}

    def score(self, responses: pd.DataFrame) -> pd.DataFrame:
        require_columns(responses, ("prompt_id",))
        groups = responses["prompt_id"].to_numpy()
        total = np.zeros(len(responses))
        normalised: dict[str, np.ndarray] = {}
        columns: dict[str, pd.Series] = {}
        stats: dict[str, Any] = {}
        for part, weight in zip(self.parts, self.weights, strict=True):
            result = part.run(responses)
            frame = result.scores
            if part.column not in frame.columns:
                raise SweetspotError(f"ensemble component {part.name!r} returned no "
                                     f"{part.column!r} column")
            for col in frame.columns:
                if col in columns or col == self.column or col.startswith(f"{self.name}/"):
                    raise SweetspotError(f"ensemble component {part.name!r} writes the column "
                                         f"{col!r}, which another part of the ensemble writes")
                columns[col] = frame[col].reindex(responses.index)
            values = columns[part.column].to_numpy(dtype=float)
            values = np.where(np.isfinite(values), values, np.nan)
            norm, flat = normalise(values, groups, self.normalize)
            normalised[f"{self.name}/{part.name}"] = norm
            if weight != 0:
                total = total + weight * norm
            stats.update({f"{part.name}/{k}": v for k, v in result.stats.items()
                          if isinstance(v, int | float) and not isinstance(v, bool)})
            stats[f"{part.name}/unscored"] = int(np.isnan(values).sum())
            if self.normalize in ("prompt_z", "global_z"):
                stats[f"{part.name}/zero_sigma_groups"] = flat
        empty = sum(is_empty(r) for r in responses["response"]) if "response" in responses else 0
        self.last_stats = {"responses": len(responses), "empty_responses": int(empty),
                           "unscored": int(np.isnan(total).sum()), **stats}
        out = {self.column: total, **normalised}
        return pd.concat([pd.DataFrame(out, index=responses.index), pd.DataFrame(columns)],
                         axis=1)

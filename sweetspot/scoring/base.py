"""The scorer interface: a table of responses in, one score column per scorer out, with the
counts of what happened (``ScoreResult``).

The pipeline (and the ensemble, for its parts) calls ``run``: the scores and the statistics of
that call, together. A subclass implements ``score`` and records its counts (empty responses,
truncations, non-finite outputs, ...) in ``self.last_stats`` while it scores; ``run`` hands them
over with the scores. Subclasses are dataclasses whose fields are the YAML node of
``conf/scorer/<option>.yaml`` (``_target_`` names the class).

Resumable shards. A scorer whose ``shard_size()`` is a number (the expensive ones: reward model,
judge) scores a table in shards of that many prompts when ``run`` gets a ``partial_dir`` (the
score stage's, which survives a kill): each finished shard's scores and counts are written
atomically, so a killed run resumes at the first missing shard, as the sampler does
(``sampling/base.py``). A shard holds whole prompt groups (the prompts in order of first
appearance, ``shard_size()`` at a time), so a score that depends on the prompt's other responses
would still be right. Which shards this process computes is the ``owned`` argument
(``all_shards``: every one); a rank-parallel stage passes its rank's share and the assembly
reads the rest from the shared folder. The assembled scores are in the input's row order and
equal an uninterrupted run's exactly (same shards, same batches); per-shard counts
are merged by ``merge_stats`` (integers summed, rates weighted by their ``STAT_WEIGHTS``).
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from sweetspot.data import read_table, write_json, write_table
from sweetspot.errors import SweetspotError

log = logging.getLogger(__name__)

ROW = "__row"  # a shard file's column: the row's position in the table given to ``run``

# Which of ``count`` shards this process computes (see ``all_shards``).
ShardOwner = Callable[[int], Iterable[int]]


def all_shards(count: int) -> range:
    """Every shard: a single process scores the whole table. A rank-parallel stage passes its
    rank's share instead (e.g. ``range(rank, count, world_size)``)."""
    return range(count)


def prompt_shards(prompt_ids: pd.Series | np.ndarray, size: int) -> list[np.ndarray]:
    """Row positions of each shard: ``size`` prompts per shard, prompts in order of first
    appearance, every response of a prompt in its prompt's shard, rows in table order."""
    codes, _ = pd.factorize(np.asarray(prompt_ids, dtype=object), use_na_sentinel=False)
    shard = codes // size
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(int(shard.max(initial=-1)) + 2))
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclass
class ScoreResult:
    """``scores``: the frame of ``Scorer.score`` (aligned with the input's index). ``stats``:
    the call's numeric counts, reported by the score stage as ``score/<key>``."""

    scores: pd.DataFrame
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(kw_only=True)
class Scorer(ABC):
    """Scores every response of a table.

    ``name`` becomes the column ``score/<name>``.
    """

    # Fields that change how the work is done, not the scores (left out of the cache key).
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ()
    # Per-shard rates and the count each is a rate of (``merge_stats``); a float stat not named
    # here is weighted by the shard's ``responses``.
    STAT_WEIGHTS: ClassVar[dict[str, str]] = {}

    name: str = "reward"

    @property
    def column(self) -> str:
        return f"score/{self.name}"

    @property
    def last_stats(self) -> dict[str, Any]:
        """The counts of the latest ``score`` call (empty before the first)."""
        return self.__dict__.get("_last_stats", {})

    @last_stats.setter
    def last_stats(self, value: dict[str, Any]) -> None:
        self.__dict__["_last_stats"] = dict(value)

    def shard_size(self) -> int | None:
        """Prompts per resumable shard; None: the table is scored in one call (cheap scorers,
        and those whose score depends on the whole table, e.g. a global z-score)."""
        return None

    def run(self, responses: pd.DataFrame, partial_dir: Path | None = None,
            owned: ShardOwner = all_shards) -> ScoreResult:
        """Score ``responses`` and return the scores with the call's numeric statistics.

        With ``partial_dir`` and a ``shard_size()``, in resumable shards (module docstring);
        ``owned`` says which shards this process computes.
        """
        size = self.shard_size()
        if partial_dir is None or size is None:
            self.last_stats = {}
            scores = self.score(responses)
            return ScoreResult(scores=scores, stats=self._numeric_stats())
        return self._run_sharded(responses, Path(partial_dir), size, owned)

    def _numeric_stats(self) -> dict[str, float]:
        return {k: v for k, v in self.last_stats.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}

    def _shard_path(self, partial_dir: Path, size: int, index: int) -> Path:
        # The shard size is in the name: a resume with another size never reads these rows.
        return partial_dir / f"scores-{size}p-{index:05d}.parquet"

    def _run_sharded(self, responses: pd.DataFrame, partial_dir: Path, size: int,
                     owned: ShardOwner) -> ScoreResult:
        partial_dir.mkdir(parents=True, exist_ok=True)
        shards = prompt_shards(responses["prompt_id"], size) if len(responses) else []
        resumed = computed = 0
        for index in owned(len(shards)):
            path = self._shard_path(partial_dir, size, index)
            if path.is_file():
                resumed += 1
                continue
            self.last_stats = {}
            rows = shards[index]
            frame = self.score(responses.iloc[rows]).reset_index(drop=True)
            frame[ROW] = rows
            # Counts first, scores last: the scores file is what marks the shard finished.
            write_json(self._numeric_stats(), path.with_suffix(".stats.json"))
            write_table(frame, path)
            computed += 1
        if resumed:
            log.info("score: resumed %d finished shards", resumed)
        frames, parts = [], []
        for index in range(len(shards)):
            path = self._shard_path(partial_dir, size, index)
            if not path.is_file():
                raise SweetspotError(f"score shard {index} of {len(shards)} is missing from "
                                     f"{partial_dir} (not computed by this process)")
            frames.append(read_table(path))
            parts.append(json.loads(path.with_suffix(".stats.json").read_text()))
        if not frames:
            self.last_stats = {}
            return ScoreResult(scores=self.score(responses), stats=self._numeric_stats())
        table = pd.concat(frames, ignore_index=True)
        order = table[ROW].to_numpy()
        if not np.array_equal(np.sort(order), np.arange(len(responses))):
            raise SweetspotError(f"score shards in {partial_dir} do not cover the table's "
                                 f"{len(responses)} rows exactly; delete the folder to rescore")
        table = table.iloc[np.argsort(order, kind="stable")].drop(columns=ROW)
        table.index = responses.index
        stats = {**self.merge_stats(parts), "shards": len(shards),
                 "shards_resumed": resumed, "shards_computed": computed}
        self.last_stats = stats
        return ScoreResult(scores=table, stats=stats)

    def merge_stats(self, parts: list[dict[str, float]]) -> dict[str, float]:
        """One table's counts from its shards': integers summed; a float (a rate) averaged with
        the weights its ``STAT_WEIGHTS`` count gives (``responses`` by default), so a rate over
        shards equals the rate over the table."""
        out: dict[str, float] = {}
        for key in dict.fromkeys(k for part in parts for k in part):
            values = [part[key] for part in parts if key in part]
            if all(isinstance(v, int) for v in values):
                out[key] = sum(values)
                continue
            weight_key = self.STAT_WEIGHTS.get(key, "responses")
            weights = np.array([part.get(weight_key, 1) for part in parts if key in part],
                               dtype=float)
            values_arr = np.asarray(values, dtype=float)
            keep = (weights > 0) & np.isfinite(values_arr)
            out[key] = (float(np.average(values_arr[keep], weights=weights[keep]))
                        if keep.any() else float("nan"))
        return out

    @abstractmethod
    def score(self, responses: pd.DataFrame) -> pd.DataFrame:
        """Return a frame aligned with ``responses.index``.

        ``responses`` holds one row per response with at least ``prompt_id``, ``sample_id``,
        ``prompt`` (list of chat messages), ``response`` (str), and the prompt-level columns of the
        task (``constraints`` as a JSON string, ``reference``) when the task has them. The result
        must contain ``self.column`` (float; NaN only for a response the scorer could not score,
        which the caller counts and reports) and may add detail columns named ``<name>/<what>``
        (e.g. ``rules/detail``: a JSON object of per-constraint scores).
        """

"""The sampler interface: prompts in, N responses per prompt out, written in resumable shards.

The pipeline calls ``run`` (the sample stage), ``used`` (the first ``use_n`` responses of each
prompt, before denoising), ``prompt_source`` (a sampler that brings its own prompts, e.g. offline
data, replaces the task) and ``comparisons`` (pairwise comparisons that came with the data, for
the denoiser). The defaults fit a sampler that generates: the task's prompts, no comparisons.

Shards: ``shard_size`` prompts each, numbered in prompt order; the plan depends on nothing else
(not on the number of ranks), and each prompt draws from its own seeded generator, so a job of
several ranks (``sample_share``: each rank samples its part of the missing shards, see
``sweetspot.distributed``) writes the shards a one-process ``run`` would.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from sweetspot.data import read_table, write_table
from sweetspot.distributed import Ranks
from sweetspot.tasks.base import Task
from sweetspot.validation import at_least, require

log = logging.getLogger(__name__)

RESPONSE_COLUMNS = (
    "prompt_id", "sample_id", "response", "num_tokens", "finish_reason", "logp", "skip_reason",
)


@dataclass(kw_only=True)
class Sampler(ABC):
    """Samples ``n`` responses per prompt.

    Prompts are processed in shards of ``shard_size``; each finished shard is written atomically
    to the stage's partial folder, so a killed run resumes at the first missing shard.
    """

    n: int = 8
    seed: int = 0
    shard_size: int = 32
    needs_model: bool = True
    use_n: int | None = None

    def __post_init__(self) -> None:
        at_least("n", self.n, 2)
        at_least("shard_size", self.shard_size, 1)
        if self.use_n is not None:
            require(
                2 <= self.use_n <= self.n,
                "use_n",
                f"must be in [2, n={self.n}] (the first use_n samples are used), got {self.use_n}",
            )

    def cache_config(self) -> dict:
        """The fields that change the output (the cache key); execution-only fields excluded."""
        skip = self.execution_only()
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def execution_only(self) -> tuple[str, ...]:
        return ("shard_size", "batch_size", "progress", "use_n")

    def prompt_source(self) -> Task | None:
        """The prompts this sampler answers when they are its own (data with its prompts, e.g.
        ``sampler=offline``), as a task that replaces the run's; None: the run's task's."""
        return None

    def comparisons(self, prompt_ids: Any = None) -> pd.DataFrame | None:
        """Pairwise comparisons that come with the responses (``prompt_id, i, j, p``), for the
        denoiser; None when the sampler has none (it generated the responses)."""
        return None

    def used(self, table: pd.DataFrame) -> pd.DataFrame:
        """The responses the later stages use: the first ``use_n`` of each prompt (all when
        null), so a sweep over N samples and scores once at the largest N."""
        if self.use_n is None:
            return table
        return table[table["sample_id"] < self.use_n].reset_index(drop=True)

    def shard_bounds(self, prompts: pd.DataFrame) -> list[tuple[int, int]]:
        """(start, stop) rows of each shard of ``prompts``."""
        size = self.shard_size
        return [(a, min(a + size, len(prompts))) for a in range(0, len(prompts), size)]

    @staticmethod
    def shard_path(partial_dir: Path, index: int) -> Path:
        return Path(partial_dir) / f"shard-{index:05d}.parquet"

    def missing_shards(self, prompts: pd.DataFrame, partial_dir: Path) -> list[int]:
        """The shards not yet in ``partial_dir`` (a killed run's finished ones are kept)."""
        return [
            i for i in range(len(self.shard_bounds(prompts)))
            if not self.shard_path(partial_dir, i).is_file()
        ]

    def write_shards(
        self, prompts: pd.DataFrame, policy: Any, partial_dir: Path, indices: list[int]
    ) -> None:
        """Sample the shards ``indices`` and write each one atomically as it finishes. A sampler
        that loads an engine once for many shards (vLLM) overrides this."""
        bounds = self.shard_bounds(prompts)
        total = sum(bounds[i][1] - bounds[i][0] for i in indices)
        if not total:
            return
        bar = tqdm(total=total, desc=f"sample n={self.n}", unit="prompt")
        self.progress = bar.update  # samplers that work in batches advance it as they go
        try:
            for i in indices:
                a, b = bounds[i]
                before = bar.n
                write_table(self.sample(prompts.iloc[a:b], policy), self.shard_path(partial_dir, i))
                bar.update(before + (b - a) - bar.n)
        finally:
            bar.close()
            self.progress = None

    def run(
        self, prompts: pd.DataFrame, policy: Any, partial_dir: Path
    ) -> tuple[pd.DataFrame, dict]:
        """Sample every prompt, reusing the shards a killed run (or the other ranks of the job,
        ``sample_share``) left behind, and assemble the table in shard order."""
        partial_dir = Path(partial_dir)
        partial_dir.mkdir(parents=True, exist_ok=True)
        missing = self.missing_shards(prompts, partial_dir)
        count = len(self.shard_bounds(prompts))
        stats = {"shards_resumed": count - len(missing)}
        if stats["shards_resumed"]:
            log.info("sample: resumed %d finished shards", stats["shards_resumed"])
        self.write_shards(prompts, policy, partial_dir, missing)
        shards = [read_table(self.shard_path(partial_dir, i)) for i in range(count)]
        table = (
            pd.concat(shards, ignore_index=True)
            if shards
            else pd.DataFrame(columns=list(RESPONSE_COLUMNS))
        )
        return table, stats

    def sample_share(
        self, prompts: pd.DataFrame, policy: Any, partial_dir: Path, ranks: Ranks
    ) -> tuple[int, dict[str, int]]:
        """One rank's part of a job of several: rank 0 lists the missing shards, each rank
        samples every world-th of them, and all wait until every shard is written. Returns the
        number of shards that were already there (rank 0's count; the others' is 0) and each
        rank's share (``shards/rank<k>``). Rank 0 then assembles with ``run``, which finds every
        shard on disk."""
        partial_dir = Path(partial_dir)
        partial_dir.mkdir(parents=True, exist_ok=True)
        missing = self.missing_shards(prompts, partial_dir) if ranks.main else []
        resumed = len(self.shard_bounds(prompts)) - len(missing) if ranks.main else 0
        mine = ranks.split(missing)
        if ranks.main and 0 < len(missing) < ranks.world:
            log.warning(
                "sample: %d shard(s) for %d ranks, so some ranks sample nothing; a smaller "
                "sampler.shard_size (<= %d here) gives every rank a share",
                len(missing), ranks.world, max(1, len(prompts) // ranks.world),
            )
        self.write_shards(prompts, policy, partial_dir, mine)
        return resumed, ranks.shares(len(mine))

    @abstractmethod
    def sample(self, prompts: pd.DataFrame, policy: Any) -> pd.DataFrame:
        """Responses of ``prompts`` (one shard), with at least ``RESPONSE_COLUMNS``."""

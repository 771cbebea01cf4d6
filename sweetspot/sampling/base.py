"""The sampler interface: prompts in, N responses per prompt out, written in resumable shards.

The pipeline calls ``run`` (the sample stage), ``used`` (the first ``use_n`` responses of each
prompt, before denoising), ``prompt_source`` (a sampler that brings its own prompts, e.g. offline
data, replaces the task) and ``comparisons`` (pairwise comparisons that came with the data, for
the denoiser). The defaults fit a sampler that generates: the task's prompts, no comparisons.
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

    def run(
        self, prompts: pd.DataFrame, policy: Any, partial_dir: Path
    ) -> tuple[pd.DataFrame, dict]:
        """Sample every prompt, reusing the shards a killed run left behind."""
        partial_dir.mkdir(parents=True, exist_ok=True)
        shards, stats = [], {"shards_resumed": 0}
        starts = range(0, len(prompts), self.shard_size)
        bar = tqdm(total=len(prompts), desc=f"sample n={self.n}", unit="prompt")
        self.progress = bar.update  # samplers that work in batches advance it as they go
        for index, start in enumerate(starts):
            path = partial_dir / f"shard-{index:05d}.parquet"
            chunk = prompts.iloc[start : start + self.shard_size]
            before = bar.n
            if path.is_file():
                stats["shards_resumed"] += 1
                shard = read_table(path)
            else:
                shard = self.sample(chunk, policy)
                write_table(shard, path)
            shards.append(shard)
            bar.update(before + len(chunk) - bar.n)
        bar.close()
        self.progress = None
        if stats["shards_resumed"]:
            log.info("sample: resumed %d finished shards", stats["shards_resumed"])
        table = (
            pd.concat(shards, ignore_index=True)
            if shards
            else pd.DataFrame(columns=list(RESPONSE_COLUMNS))
        )
        return table, stats

    @abstractmethod
    def sample(self, prompts: pd.DataFrame, policy: Any) -> pd.DataFrame:
        """Responses of ``prompts`` (one shard), with at least ``RESPONSE_COLUMNS``."""

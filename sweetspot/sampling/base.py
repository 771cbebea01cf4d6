"""The sampler interface: prompts in, N responses per prompt out, written in resumable shards."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from sweetspot.data import read_table, write_table
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

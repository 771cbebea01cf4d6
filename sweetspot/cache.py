"""A content-addressed stage cache, like a build system's.

An entry's key hashes its stage name, its own config node and the keys of its inputs, so a run
whose upstream config is unchanged finds the upstream tables already there (a sweep over
``selection=`` samples once). An entry becomes visible only by an atomic rename of a finished
folder, and carries ``meta.json`` (config, inputs, per-file sha256) which is checked before use:
a torn or corrupted entry is moved aside and recomputed, never read. Stages that write shards
keep them in ``<key>.partial/`` so a killed run resumes at the first missing shard. A file lock
per key makes jobs of one sweep that share the folder compute each entry once.

In a job of several ranks (``distributed.py``) rank 0 alone takes the lock, looks up, commits
and moves damaged entries aside; a stage computed by every rank (``every_rank``: the sharded
stages, training) runs its compute function on each rank with the shared partial folder, and
the other ranks' ``out_dir`` is a scratch folder that is thrown away.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from sweetspot.distributed import SOLO, Ranks
from sweetspot.errors import DataError, SweetspotError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
META = "meta.json"


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_key(stage: str, config: Any, inputs: list[str]) -> str:
    """An entry's key: its stage, its own config and its inputs' keys (see stage_keys.py for what
    each stage's config holds)."""
    return fingerprint({"v": CACHE_VERSION, "stage": stage, "config": config, "inputs": inputs})


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, or of a folder's files (relative names and contents, in name
    order): the one file hash of the project (cache entries' checksums, task and offline-data
    fingerprints), read in chunks so a large dataset never sits in memory whole."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=str(path))
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


@dataclass
class Entry:
    stage: str
    key: str
    path: Path
    meta: dict
    reused: bool

    def file(self, name: str) -> Path:
        return self.path / name


@dataclass
class StageContext:
    """What a stage's compute function may write: ``out_dir`` (the entry's files) and
    ``partial_dir`` (shards that survive a kill); ``ranks``: the job's ranks, for a stage
    computed by every rank (``get_or_compute(every_rank=True)``)."""

    out_dir: Path
    partial_dir: Path
    ranks: Ranks = SOLO


def worker_rank() -> int:
    """The process's rank inside a distributed job launched by Lightning (0 elsewhere). Used only
    in a one-rank run (``ranks.many`` false): there a nonzero rank is a process that Lightning's
    DDP launcher started at ``fit``."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


class StageCache:
    def __init__(self, root: str | Path, ranks: Ranks = SOLO):
        self.root = Path(root)
        self.ranks = ranks

    def key(self, stage: str, config: Any, inputs: list[str]) -> str:
        return stage_key(stage, config, inputs)

    def entry_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> Entry | None:
        """A complete, verified entry, or None (a damaged one is moved aside)."""
        path = self.entry_dir(stage, key)
        if not path.exists():
            return None
        problem = self._verify(path)
        if problem is None:
            meta = json.loads((path / META).read_text())
            return Entry(stage, key, path, meta, reused=True)
        aside = path.with_name(f"{key}.corrupt-{int(time.time())}")
        log.warning(
            "cache entry %s is damaged (%s); moved to %s, recomputing", path, problem, aside
        )
        os.rename(path, aside)
        return None

    def _verify(self, path: Path) -> str | None:
        meta_path = path / META
        if not meta_path.is_file():
            return "no meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            return f"meta.json unreadable: {e}"
        for name, digest in meta.get("files", {}).items():
            f = path / name
            if not f.is_file():
                return f"missing {name}"
            if file_sha256(f) != digest:
                return f"checksum mismatch in {name}"
        return None

    def get_or_compute(
        self,
        stage: str,
        config: Any,
        inputs: list[str],
        compute: Callable[[StageContext], dict | None],
        every_rank: bool = False,
    ) -> Entry:
        """Return the entry for (stage, config, inputs), computing it under a lock if absent.

        ``compute`` writes its files into ``ctx.out_dir`` and may return extra metadata
        (counts, timings) that is stored in ``meta.json``. With several ranks, ``every_rank``
        runs ``compute`` on every rank (it splits its shards with ``ctx.ranks``); otherwise rank
        0 computes alone and the others wait for the committed entry.
        """
        key = self.key(stage, config, inputs)
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        if self.ranks.many:
            return self._with_ranks(stage, config, inputs, key, compute, every_rank)
        if worker_rank() != 0:
            return self._compute_as_worker(stage, key, compute)
        return self._locked(stage, config, inputs, key, compute)

    def _locked(
        self,
        stage: str,
        config: Any,
        inputs: list[str],
        key: str,
        compute: Callable[[StageContext], dict | None],
        announce: Callable[[bool], None] = lambda found: None,
    ) -> Entry:
        """Look up under the key's lock, else compute into a temporary folder and rename it
        into place. ``announce(found)`` runs right after the lookup (rank 0 tells the others
        whether to compute with it)."""
        stage_dir = self.root / stage
        with FileLock(str(stage_dir / f"{key}.lock")):
            found = self.lookup(stage, key)
            announce(found is not None)
            if found is not None:
                log.info("stage %s: reusing cached %s", stage, found.path)
                return found
            tmp = stage_dir / f"{key}.tmp-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            partial = stage_dir / f"{key}.partial"
            started = time.time()
            try:
                extra = compute(
                    StageContext(out_dir=tmp, partial_dir=partial, ranks=self.ranks)
                ) or {}
                files = {
                    str(p.relative_to(tmp)): file_sha256(p)
                    for p in sorted(tmp.rglob("*"))
                    if p.is_file()
                }
                meta = {
                    "stage": stage,
                    "key": key,
                    "config": config,
                    "inputs": inputs,
                    "files": files,
                    "seconds": round(time.time() - started, 3),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    **extra,
                }
                (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
                os.rename(tmp, self.entry_dir(stage, key))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(partial, ignore_errors=True)
            log.info("stage %s: computed %s in %.1fs", stage, key, meta["seconds"])
            return Entry(stage, key, self.entry_dir(stage, key), meta, reused=False)

    def _with_ranks(
        self,
        stage: str,
        config: Any,
        inputs: list[str],
        key: str,
        compute: Callable[[StageContext], dict | None],
        every_rank: bool,
    ) -> Entry:
        """One stage in a job of several ranks. Rank 0 broadcasts ``("found" | "compute" |
        "failed", detail)`` after its lookup (``every_rank`` only) and ``("done" | "failed",
        detail)`` at the end. A failure inside an ``every_rank`` compute is not broadcast (the
        other ranks may be inside a collective of their own): the failing rank exits, and the
        launcher (torchrun; srun with --kill-on-bad-exit) stops the others."""
        ranks = self.ranks
        if ranks.main:
            announced = False

            def announce(found: bool) -> None:
                nonlocal announced
                if every_rank:
                    ranks.broadcast(("found" if found else "compute", None))
                announced = True

            try:
                entry = self._locked(stage, config, inputs, key, compute, announce)
            except BaseException as e:
                if not (every_rank and announced):
                    ranks.broadcast(("failed", f"{type(e).__name__}: {e}"))
                raise
            ranks.broadcast(("done", None))
            return entry
        if every_rank:
            status, detail = ranks.broadcast(None)
            if status == "failed":
                raise SweetspotError(f"stage {stage}: rank 0 failed: {detail}")
            if status == "compute":
                scratch = self.root / stage / f"{key}.rank{ranks.rank}-{uuid.uuid4().hex[:8]}"
                scratch.mkdir()
                try:
                    compute(StageContext(out_dir=scratch,
                                         partial_dir=self.root / stage / f"{key}.partial",
                                         ranks=ranks))
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
        status, detail = ranks.broadcast(None)
        if status == "failed":
            raise SweetspotError(f"stage {stage}: rank 0 failed: {detail}")
        # rank 0 verified the entry it committed or found; read its meta without hashing again
        path = self.entry_dir(stage, key)
        return Entry(stage, key, path, json.loads((path / META).read_text()), reused=True)

    def _compute_as_worker(self, stage: str, key: str,
                           compute: Callable[[StageContext], dict | None]) -> Entry:
        """A DDP worker re-runs the pipeline beside rank 0: it reads finished entries, and joins
        the computation of the one rank 0 is inside (training) without taking its lock or
        committing anything, which would deadlock or race."""
        found = self.lookup(stage, key)
        if found is not None:
            return found
        tmp = self.root / stage / f"{key}.rank{worker_rank()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            extra = compute(StageContext(out_dir=tmp, partial_dir=tmp / "partial")) or {}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Entry(stage, key, tmp, {"stage": stage, "key": key, **extra}, reused=False)

"""The ranks of one job: when torchrun, or SLURM with several tasks (srun, submitit), starts the
run, every rank runs the pipeline and the heavy stages split their shards between the ranks.

Who does what (``pipeline.py`` and ``cache.py`` use this module through :class:`Ranks`):

- sample, score and the evaluation answers: rank 0 lists the missing shards and broadcasts the
  list; rank k takes every world-th of them (``Ranks.split``; the scorer's shard loop takes
  every world-th shard, ``Ranks.owner``, and skips finished ones), writes each finished shard
  atomically into the stage's shared ``<key>.partial/`` folder, and the ranks meet
  (``Ranks.shares``, which also reports each rank's share); rank 0 then assembles the entry and
  commits it, and the others read the committed entry. A scorer without shards (the cheap
  ones) scores on rank 0;
- training: Lightning DDP/FSDP across the same ranks, in the process group joined here (the
  strategy finds it initialised and does not launch processes);
- every other stage, and everything after training but the answers, runs on rank 0; the others
  wait for its result (a broadcast, which also carries rank 0's error, if any, so no rank waits
  for a stage that failed).

Output equals a one-process run's because every prompt draws from its own seeded generator and
the shard plan depends on ``shard_size`` alone, not on the number of ranks.

The launcher's description of the process (rank, world size, rendezvous address) is Lightning's
``TorchElasticEnvironment`` (torchrun) or ``SLURMEnvironment`` (srun): the same objects the
Trainer uses, so the stages and training agree on who is who. A Lightning DDP run started as one
process (``trainer=ddp`` without torchrun) is not a multi-rank run: Lightning starts the extra
processes at ``fit``, and they re-run the pipeline as workers (``cache.worker_rank``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)

# How long a rank waits for the others at a meeting point: rank 0 may compute a stage alone for
# hours while the others wait for it (an unsharded scorer, a large denoiser). A rank that dies
# makes torchrun (and srun with --kill-on-bad-exit) stop the others, so this is a last resort.
TIMEOUT = timedelta(hours=float(os.environ.get("SWEETSPOT_RANK_TIMEOUT_HOURS", "48")))


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job. ``Ranks()`` (``SOLO``) is a one-process run, where every
    method is the trivial one (no torch.distributed call)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    group: Any = None  # the gloo group of the stages' meeting points

    @property
    def main(self) -> bool:
        """Rank 0: it commits cache entries and writes the run folder."""
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.world > 1

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.many:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank; a meeting point."""
        if not self.many:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value, group=self.group)
        return out

    def split(self, missing: list[int]) -> list[int]:
        """This rank's part of the missing shards (indices). The list is rank 0's, broadcast, so
        every rank splits the same list even while another rank's shards appear on disk."""
        agreed = self.broadcast(list(missing))
        return agreed[self.rank :: self.world]

    def shares(self, done: int) -> dict[str, int]:
        """Wait until every rank has written its shards; each rank's count of shards computed,
        as the stage's counts ``shards/rank<k>`` (metrics.json: ``<stage>/shards/rank<k>``);
        nothing in a one-process run."""
        if not self.many:
            return {}
        return {f"shards/rank{k}": int(n) for k, n in enumerate(self.gather(int(done)))}

    def owner(self) -> Callable[[int], Iterator[int]]:
        """A ``ShardOwner`` for ``Scorer.run``: this rank's shards of ``count`` (every world-th),
        then a meeting point, so when the scorer's loop is done every rank's shards are on disk
        and its assembly can read them all."""

        def owned(count: int) -> Iterator[int]:
            yield from range(self.rank, count, self.world)
            self.gather(None)

        return owned


SOLO = Ranks()


def launcher_environment() -> Any | None:
    """Lightning's cluster environment of this process when a launcher started it as one of
    several ranks (torchrun first: torchrun inside an srun step sees SLURM's variables too,
    which describe the srun tasks, one per node, not the ranks); None for a single process."""
    if "LOCAL_WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return None  # neither torchrun nor a SLURM step of several tasks: skip importing Lightning
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        env = TorchElasticEnvironment()
    elif SLURMEnvironment.detect():
        env = SLURMEnvironment()
    else:
        return None
    return env if env.world_size() > 1 else None


_joined: Ranks | None = None


def setup() -> Ranks:
    """Join the job's process group (once per process) and return this process's ranks; SOLO
    when the run is a single process.

    The default group is the one Lightning's strategy will find and use (gloo on CPUs; on a GPU
    machine gloo for CPU tensors and NCCL for CUDA ones); the stages meet in a gloo group of
    their own with a long timeout. Each rank's default CUDA device is its local rank's, and the
    ranks other than 0 draw no progress bars."""
    global _joined
    if _joined is not None:
        return _joined
    env = launcher_environment()
    if env is None:
        return SOLO
    import torch
    import torch.distributed as dist
    from torch.distributed.constants import default_pg_timeout

    if not dist.is_initialized():
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        # the default group serves Lightning's collectives: its default timeout, as when
        # Lightning creates the group itself; the stages wait in their own group (TIMEOUT)
        dist.init_process_group(
            backend, rank=env.global_rank(), world_size=env.world_size(),
            timeout=default_pg_timeout,
        )
    group = dist.new_group(backend="gloo", timeout=TIMEOUT)
    rank, world = dist.get_rank(), dist.get_world_size()
    hosts: list[Any] = [None] * world
    dist.all_gather_object(hosts, socket.gethostname(), group=group)
    local_world = hosts.count(hosts[rank])
    local_rank = env.local_rank()
    if torch.cuda.is_available() and torch.cuda.device_count():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if rank != 0:
        os.environ["TQDM_DISABLE"] = "1"
    _joined = Ranks(rank, world, local_rank, local_world, group)
    log.info("rank %d of %d (local %d of %d on %s)", rank, world, local_rank, local_world,
             hosts[rank])
    return _joined


def current() -> Ranks:
    """The ranks this process joined (``setup``), or SOLO: for the adapters that place work on
    devices (the vLLM sampler), which the stages call without a ``Ranks`` argument."""
    return _joined or SOLO


def lightning_plugins(ranks: Ranks) -> list[Any]:
    """The Trainer's ``plugins``: the launcher's environment when the run has several ranks, so
    Lightning counts the ranks as this module does (its own detection tries SLURM before
    torchrun, which is wrong for torchrun inside srun)."""
    if not ranks.many:
        return []
    env = launcher_environment()
    return [env] if env is not None else []


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else all of them."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@contextmanager
def engine_gpus(need: int, ranks: Ranks | None = None) -> Iterator[list[str]]:
    """Start an engine that places itself by ``CUDA_VISIBLE_DEVICES`` (vLLM) on this rank's
    block of ``need`` GPUs (:func:`rank_gpus`), then give the process its full view back.

    Under torchrun every rank sees all of the node's GPUs, so without this each rank's engine
    would load onto GPU 0. The variable is restored on exit because the same process later
    trains with Lightning, which picks ``cuda:<local_rank>`` among all visible GPUs; vLLM's
    engine core is a child process that keeps the view it was started with. A one-rank run is
    left as it is."""
    ranks = ranks or current()
    if not ranks.many:
        yield visible_gpus()
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = rank_gpus(visible_gpus(), ranks.local_rank, ranks.local_world, need)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    try:
        yield gpus
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def rank_gpus(visible: list[str], local_rank: int, local_world: int, need: int) -> list[str]:
    """The GPUs (``CUDA_VISIBLE_DEVICES`` entries) of one rank's engines: block ``local_rank``
    of size ``need`` when the visible GPUs hold every local rank's block (torchrun: every rank
    sees the node's GPUs); all of them when the launcher already gave each rank its own (srun
    with --gpus-per-task: a rank sees its GPUs only)."""
    if len(visible) >= need * local_world and local_world > 1:
        return visible[local_rank * need : (local_rank + 1) * need]
    return list(visible)

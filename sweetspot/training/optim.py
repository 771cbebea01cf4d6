"""The optimizer, the learning-rate schedule and the extra callbacks of a training run, built
from the trainer's config nodes with ``hydra.utils.instantiate``.

``trainer.optimizer`` and ``trainer.lr_scheduler`` are ``_partial_`` nodes: Hydra returns a
``functools.partial`` that the module completes with what only the run knows (the trainable
parameters and ``trainer.lr``; the optimizer and the step counts). The default schedule,
:class:`WarmupThenDecay`, is built from torch's own schedulers; any function with the signature
of transformers' ``get_*_schedule_with_warmup`` can replace it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
)

from sweetspot.errors import ConfigError
from sweetspot.validation import one_of, require

DECAYS = ("cosine", "linear", "constant")


def check_partial(
    field: str, node: Any, supplied: Sequence[str], partial: bool = True
) -> None:
    """Fail at validation, naming the key, when ``node`` is not a ``_target_`` node (with
    ``_partial_: true`` when ``partial``), its target does not import, or it sets an argument
    the target does not take. ``supplied``: the arguments the run fills in itself."""
    require(isinstance(node, dict) and "_target_" in node, field, "must be a node with _target_")
    require(
        bool(node.get("_partial_", False)) == partial,
        f"{field}._partial_",
        "must be true (the run completes the call)" if partial else "must not be set",
    )
    try:
        target = get_object(node["_target_"])
    except Exception as e:  # hydra wraps import errors in several types
        raise ConfigError(f"{field}._target_", f"cannot import {node['_target_']!r}: {e}") from None
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    for key in [k for k in node if not k.startswith("_")]:
        require(key in params, f"{field}.{key}", f"is not an argument of {node['_target_']}")
    for key in supplied:
        require(key in params, f"{field}._target_",
                f"{node['_target_']} must take {key!r} (the run passes it)")
    if node["_target_"] == f"{__name__}.WarmupThenDecay":
        one_of(f"{field}.decay", node.get("decay", "cosine"), DECAYS)


def build_optimizer(
    node: dict, params: Iterable[torch.nn.Parameter], lr: float, precision: str
) -> torch.optim.Optimizer:
    """The optimizer of ``node`` over ``params`` at ``lr``. ``fused: null`` (AdamW's default
    node) chooses the fused kernel, the fastest AdamW (TRL's default too), unless the run uses
    mixed precision: Lightning refuses to clip gradients for it there, so those runs take the
    foreach one."""
    params = list(params)
    factory = instantiate(node)
    extra: dict[str, Any] = {}
    if factory.keywords.get("fused", False) is None:
        fused = not precision.endswith("-mixed") and all(
            p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params
        )
        extra["fused"] = fused or None
    return factory(params, lr=lr, **extra)


def build_scheduler(
    node: dict, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> LRScheduler:
    """The schedule of ``node``, stepped once per optimizer step."""
    return instantiate(node)(
        optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )


def build_callbacks(nodes: Sequence[dict]) -> list[Any]:
    """The extra Lightning callbacks of ``trainer.callbacks``."""
    return [instantiate(node) for node in nodes]


class WarmupThenDecay(SequentialLR):
    """Linear warmup over ``num_warmup_steps`` from ``lr / (warmup + 1)`` (step ``s`` gets
    ``lr * (s + 1) / (warmup + 1)``, so no step trains at 0), then ``decay`` over the remaining
    steps: cosine to 0, linear to 0, or constant. torch's LinearLR, CosineAnnealingLR and
    ConstantLR in a SequentialLR. The curve is sweetspot's schedule since its first release (the
    cached trainings were made with it); transformers' warmup, which starts at 0, differs."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        num_warmup_steps: int,
        num_training_steps: int,
        decay: str = "cosine",
    ):
        one_of("decay", decay, DECAYS)
        steps = max(1, num_training_steps - num_warmup_steps)
        if decay == "cosine":
            after: LRScheduler = CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
        elif decay == "linear":
            after = LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=steps)
        else:
            after = ConstantLR(optimizer, factor=1.0, total_iters=0)
        if num_warmup_steps <= 0:
            super().__init__(optimizer, [after], milestones=[])
            return
        ramp = LinearLR(
            optimizer, start_factor=1.0 / (num_warmup_steps + 1), end_factor=1.0,
            total_iters=num_warmup_steps,
        )
        super().__init__(optimizer, [ramp, after], milestones=[num_warmup_steps])

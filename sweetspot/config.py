"""Where the configs live, and validation of a composed config before any heavy work.

Every stage node carries ``_target_``: a dataclass whose fields are the node. Validation merges
the node into ``OmegaConf.structured(cls)`` (types, unknown keys) and then instantiates it
(ranges, in ``__post_init__``). Strategy constructors are cheap by contract: models and data are
loaded only when a stage runs, so a bad value fails in seconds, not after the model loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweetspot.errors import ConfigError

STAGE_GROUPS = (
    "task",
    "model",
    "sampler",
    "scorer",
    "denoiser",
    "selection",
    "loss",
    "trainer",
    "evaluation",
    "logger",
)


def config_dir() -> Path:
    """``conf/`` ships in the wheel as ``sweetspot/conf``; an editable install uses the repo's."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"sweetspot's conf/ folder was not found next to {here}")


@dataclass
class Plan:
    """The instantiated, validated stage objects of one run."""

    task: Any
    model: Any
    sampler: Any
    scorer: Any
    denoiser: Any
    selection: Any
    loss: Any
    trainer: Any
    evaluation: Any
    logger: Any
    eval_scorer: Any = None


def build_node(node: DictConfig, where: str) -> Any:
    """Type-check ``node`` against its ``_target_`` dataclass and instantiate it."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(where, "expected a config node with a _target_")
    try:
        node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    except OmegaConfBaseException as e:
        raise ConfigError(
            f"{where}.{getattr(e, 'full_key', None) or '?'}", _first_line(e)
        ) from None
    target = node._target_
    try:
        cls = get_class(target)
    except Exception as e:  # hydra wraps import errors in several types
        raise ConfigError(f"{where}._target_", f"cannot import {target!r}: {e}") from None
    if dataclasses.is_dataclass(cls):
        values = OmegaConf.masked_copy(node, [k for k in node if k != "_target_"])
        missing = [k for k in values if OmegaConf.is_missing(values, k)]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}", "is required (set it on the command line)")
        try:
            typed = OmegaConf.merge(OmegaConf.structured(cls), values)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            raise ConfigError(f"{where}.{key}", _first_line(e)) from None
        build = partial(OmegaConf.to_object, typed)  # builds nested dataclasses too
    else:
        build = partial(instantiate, node, _convert_="all")
    try:
        return build()
    except ConfigError as e:
        raise ConfigError(f"{where}.{e.field}", e.message) from None
    except Exception as e:
        inner = e.__cause__ or e.__context__
        if isinstance(inner, ConfigError):
            raise ConfigError(f"{where}.{inner.field}", inner.message) from None
        raise ConfigError(where, _first_line(inner or e)) from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def validate(cfg: DictConfig) -> Plan:
    """Build every stage object, failing fast with the field's name."""
    missing = [g for g in STAGE_GROUPS if g not in cfg]
    if missing:
        raise ConfigError(missing[0], "config group is missing from the composed config")
    plan = Plan(**{g: build_node(cfg[g], g) for g in STAGE_GROUPS})
    own = cfg.evaluation.get("scorer")
    plan.eval_scorer = build_node(own, "evaluation.scorer") if own else plan.scorer
    return plan

"""Where the configs live, their schema, and validation of a composed config before any heavy
work.

Defaults live in one place: the stage's dataclass. Each option file of a config group
(``conf/<group>/<option>.yaml``) starts from its class's schema, registered in Hydra's
ConfigStore by :func:`register_schemas` under the class's dotted path::

    defaults:
      - /schema@_here_: sweetspot.sampling.hf.HFSampler   # every field, its type and default
      - _self_
    seed: ${seed}                                           # only what this option changes

The schema node is the dataclass plus ``_target_`` (the class), so Hydra types every field at
composition (``sampler.n=eight`` fails there, naming the key) and the option file holds only what
it changes (``tests/test_config_schema.py`` checks that no file restates a default). A new
strategy is still one class and one YAML file: the schema is found from the file's defaults line.

Validation merges each stage node into ``OmegaConf.structured(cls)`` (types, unknown keys) and
then instantiates it (ranges, in ``__post_init__``). Strategy constructors are cheap by contract:
models and data are loaded only when a stage runs, so a bad value fails in seconds, not after the
model loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
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
    """``conf/`` ships in the wheel as ``sweetspot/conf``; an editable install uses the repo's.
    Its schemas are registered on the first call (every caller composes from this folder:
    the CLI, the tests); not at import, as the stage modules import this one."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            if candidate not in _REGISTERED:
                register_schemas(candidate)
                _REGISTERED.add(candidate)
            return candidate
    raise FileNotFoundError(f"sweetspot's conf/ folder was not found next to {here}")


_REGISTERED: set[Path] = set()


SCHEMA_GROUP = "schema"


@dataclass(kw_only=True)
class PathsConfig:
    """``paths``: where the stage cache lives (a shared filesystem lets a sweep's jobs share
    what they computed). Not a stage: no ``_target_``."""

    cache_dir: str = "${oc.env:SWEETSPOT_CACHE,'~/.cache/sweetspot'}"


def schema_node(cls: type) -> DictConfig:
    """``cls`` as a config schema: its fields, types and defaults, plus ``_target_`` naming it
    (stage classes; :class:`PathsConfig` has none). The node stays typed as ``cls`` itself (an
    importable class: a composed config pickles for the launchers' worker processes)."""
    node = OmegaConf.structured(cls)
    if cls is not PathsConfig:
        with open_dict(node):
            node["_target_"] = f"{cls.__module__}.{cls.__qualname__}"
    return node


def schema_targets(root: Path) -> dict[str, Path]:
    """The classes the option files of ``root`` name in a ``/schema@...: <class>`` defaults
    entry, each with the first file naming it (read as plain YAML: nothing is composed)."""
    targets: dict[str, Path] = {}
    for path in sorted(root.glob("*/**/*.yaml")):
        if path.relative_to(root).parts[0] == "hydra":
            continue
        data = yaml.safe_load(path.read_text()) or {}
        for entry in data.get("defaults", []) if isinstance(data, dict) else []:
            if isinstance(entry, dict):
                for key, value in entry.items():
                    if str(key).lstrip("/").startswith(f"{SCHEMA_GROUP}@"):
                        targets.setdefault(str(value), path)
    return targets


def register_schemas(root: Path) -> list[str]:
    """Register the schema of every class an option file of ``root`` names (idempotent;
    importing the classes imports torch). :func:`config_dir` calls it once per process."""
    store = ConfigStore.instance()
    targets = schema_targets(root)
    for target, path in targets.items():
        try:
            cls = get_class(target)
        except Exception as e:  # hydra wraps import errors in several types
            raise ConfigError(f"{path}: defaults", f"cannot import {target!r}: {e}") from None
        store.store(group=SCHEMA_GROUP, name=target, node=schema_node(cls))
    return sorted(targets)


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
            for key in values:  # a free-form dict field (trainer.lr_scheduler) is taken whole:
                # merged, the default's keys that the composed node dropped would come back
                # (``~trainer.lr_scheduler.decay`` with another ``_target_``)
                if isinstance(typed[key], DictConfig) and OmegaConf.get_type(typed[key]) is dict:
                    typed[key] = values[key]
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

"""Range checks that strategies call from ``__post_init__``.

Each strategy is a dataclass; OmegaConf checks the types when the composed config is merged
into it, and these helpers check the ranges. The field name given is relative to the strategy's
own node; the config validator prefixes the group (``sampler.n``).
"""

from __future__ import annotations

import math

from sweetspot.errors import ConfigError


def require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(field, message)


def positive(field: str, value: float) -> None:
    require(
        value is not None and math.isfinite(value) and value > 0, field, f"must be > 0, got {value}"
    )


def non_negative(field: str, value: float) -> None:
    require(
        value is not None and math.isfinite(value) and value >= 0,
        field,
        f"must be >= 0, got {value}",
    )


def at_least(field: str, value: float, low: float) -> None:
    require(value is not None and value >= low, field, f"must be >= {low}, got {value}")


def fraction(field: str, value: float) -> None:
    """A fraction of a set: in (0, 1]."""
    require(value is not None and 0 < value <= 1, field, f"must be in (0, 1], got {value}")


def probability(field: str, value: float) -> None:
    """A probability or a rate: in [0, 1]."""
    require(value is not None and 0 <= value <= 1, field, f"must be in [0, 1], got {value}")


def one_of(field: str, value: object, options: tuple | list) -> None:
    require(value in options, field, f"must be one of {list(options)}, got {value!r}")

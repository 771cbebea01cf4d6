"""Errors a user can act on: each names what is wrong and where."""

from __future__ import annotations


class SweetspotError(Exception):
    """Base class: the CLI prints these as one clear message instead of a traceback."""


class ConfigError(SweetspotError):
    """A config value is invalid; raised before any model or data is loaded."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"config error at '{field}': {message}")


class DataError(SweetspotError):
    """A row of user data is invalid; names the file, the 1-based line and the field."""

    def __init__(
        self,
        message: str,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        self.path, self.line, self.field = path, line, field
        where = ":".join(str(p) for p in (path, line) if p is not None)
        prefix = f"{where}: " if where else ""
        suffix = f" (field '{field}')" if field else ""
        super().__init__(f"{prefix}{message}{suffix}")


class MissingExtraError(SweetspotError):
    """An optional heavy dependency is not installed."""

    def __init__(self, package: str, extra: str):
        super().__init__(f"{package} is not installed: pip install 'sweetspot[{extra}]'")

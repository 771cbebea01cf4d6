"""The tables that flow between stages, and their I/O.

Tables are pandas frames stored as Parquet (Arrow, what ``datasets`` and TRL read). Chat
messages are lists of ``{"role", "content"}`` dicts; Parquet hands them back as arrays, so
every reader goes through :func:`as_messages`. Every write is atomic (temporary file, then
rename), so a killed run never leaves a half-written table behind.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweetspot.errors import DataError

Messages = list[dict[str, str]]


def as_messages(value: Any, where: str = "prompt") -> Messages:
    """A prompt as chat messages: a plain string becomes one user turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(
        f"expected a string or a list of {{role, content}} messages, got {value!r:.80}", field=where
    )


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    df.reset_index(drop=True).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def write_text(text: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    return write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    lines = (json.dumps(r, ensure_ascii=False, default=_json_default) for r in rows)
    return write_text("".join(line + "\n" for line in lines), path)


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a malformed line is an error naming the file and the line."""
    rows = []
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=str(path))
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"not valid UTF-8 ({e.reason})", path=str(path), line=number
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON: {e.msg}", path=str(path), line=number) from None
            if not isinstance(row, dict):
                raise DataError("each line must be a JSON object", path=str(path), line=number)
            rows.append(row)
    return rows


def pairs_for_trl(pairs: pd.DataFrame) -> list[dict]:
    """Rows in TRL's conversational preference format, score columns kept beside them."""
    rows = []
    for rec in pairs.to_dict("records"):
        rec = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in rec.items()}
        rec["prompt"] = as_messages(rec["prompt"])
        rec["chosen"] = [{"role": "assistant", "content": rec["chosen"]}]
        rec["rejected"] = [{"role": "assistant", "content": rec["rejected"]}]
        rows.append(rec)
    return rows

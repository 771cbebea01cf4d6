"""A user's prompts: JSONL or Parquet rows with a prompt (a string or chat messages)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sweetspot.cache import file_sha256
from sweetspot.data import as_messages, read_jsonl
from sweetspot.errors import DataError
from sweetspot.tasks.base import Task
from sweetspot.validation import require


@dataclass(kw_only=True)
class FileTask(Task):
    """Rows from ``path``; ``split_field`` names a column of ``train``/``heldout`` values, else a
    seeded ``heldout_fraction`` of the rows is held out."""

    path: str
    prompt_field: str = "prompt"
    id_field: str | None = None
    split_field: str | None = None
    heldout_fraction: float = 0.1
    seed: int = 0
    keep_fields: list[str] | None = None

    def __post_init__(self) -> None:
        require(
            0 <= self.heldout_fraction < 1,
            "heldout_fraction",
            f"must be in [0, 1), got {self.heldout_fraction}",
        )

    def fingerprint(self) -> dict:
        path = Path(self.path)
        if not path.is_file():
            raise DataError("file not found", path=self.path)
        return {"sha256": file_sha256(path)}

    def _rows(self) -> list[dict]:
        if self.path.endswith(".parquet"):
            return pd.read_parquet(self.path).to_dict("records")
        return read_jsonl(self.path)

    def load(self) -> pd.DataFrame:
        out, seen = [], set()
        for line, row in enumerate(self._rows(), start=1):
            if self.prompt_field not in row:
                raise DataError("missing prompt", self.path, line, self.prompt_field)
            try:
                messages = as_messages(row[self.prompt_field], self.prompt_field)
            except DataError as e:
                raise DataError(
                    str(e).split(" (field")[0], self.path, line, self.prompt_field
                ) from None
            if not any(m["content"].strip() for m in messages):
                raise DataError("empty prompt", self.path, line, self.prompt_field)
            pid = str(row[self.id_field]) if self.id_field else f"row-{line:06d}"
            if self.id_field and self.id_field not in row:
                raise DataError("missing id", self.path, line, self.id_field)
            if pid in seen:
                raise DataError(
                    f"duplicate prompt id {pid!r}", self.path, line, self.id_field or "line"
                )
            seen.add(pid)
            rec = {"prompt_id": pid, "prompt": messages}
            if self.split_field:
                split = row.get(self.split_field)
                if split not in ("train", "heldout"):
                    raise DataError(
                        f"split must be 'train' or 'heldout', got {split!r}",
                        self.path,
                        line,
                        self.split_field,
                    )
                rec["split"] = split
            for key in ("constraints", "reference", *(self.keep_fields or [])):
                if key in row:
                    value = row[key]
                    rec[key] = (
                        value
                        if isinstance(value, str) or key != "constraints"
                        else json.dumps(value)
                    )
            out.append(rec)
        if not out:
            raise DataError("no rows", self.path)
        df = pd.DataFrame(out)
        if not self.split_field:
            rng = np.random.default_rng(self.seed)
            held = rng.random(len(df)) < self.heldout_fraction
            df["split"] = np.where(held, "heldout", "train")
        return self.limit(df)

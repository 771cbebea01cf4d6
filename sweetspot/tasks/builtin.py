"""The built-in task: instruction prompts with verifiable constraints (``task=ifeval_mini``)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sweetspot.cache import file_sha256
from sweetspot.tasks.base import Task


@dataclass(kw_only=True)
class IFEvalMini(Task):
    def load(self) -> pd.DataFrame:
        from sweetspot.tasks.ifeval_mini import load_ifeval_mini

        return self.limit(load_ifeval_mini())

    def fingerprint(self) -> dict:
        from importlib.resources import as_file, files

        with as_file(files("sweetspot.tasks.data").joinpath("ifeval_mini.jsonl")) as path:
            return {"sha256": file_sha256(path)}

"""The built-in task: instruction prompts with verifiable constraints (``task=ifeval_mini``)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sweetspot.tasks.base import Task


@dataclass(kw_only=True)
class IFEvalMini(Task):
    def load(self) -> pd.DataFrame:
        from sweetspot.tasks.ifeval_mini import load_ifeval_mini

        return self.limit(load_ifeval_mini())

    def fingerprint(self) -> dict:
        import hashlib
        from importlib.resources import files

        data = files("sweetspot.tasks.data").joinpath("ifeval_mini.jsonl").read_bytes()
        return {"sha256": hashlib.sha256(data).hexdigest()}

"""Experiment trackers: W&B (offline unless configured), CSV, or none.

Lightning's loggers carry the training curves; the same objects receive the pipeline's stage
metrics, the composed config, a sample of the pairs table and the plots, so one W&B run holds
everything a run produced. W&B files live inside the run folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sweetspot.validation import at_least, one_of, require

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class WandbOptions:
    mode: str = "offline"
    project: str = "sweetspot"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    pairs_sample: int = 50


@dataclass(kw_only=True)
class Tracker:
    backends: list[str] = field(default_factory=lambda: ["csv", "wandb"])
    wandb: WandbOptions = field(default_factory=WandbOptions)

    def __post_init__(self) -> None:
        for name in self.backends:
            one_of("backends", name, ("csv", "wandb"))
        one_of("wandb.mode", self.wandb.mode, ("offline", "online", "disabled"))
        at_least("wandb.pairs_sample", self.wandb.pairs_sample, 0)
        require(len(set(self.backends)) == len(self.backends), "backends", "has duplicates")
        # The Lightning loggers, kept by role: the CSV logger takes the summary rows, the W&B
        # run the summary, the pairs table and the plots.
        self._csv: Any = None
        self._wandb: Any = None

    def start(self, run_dir: Path, run_name: str, config: dict) -> list[Any]:
        """Create the Lightning loggers for this run (once)."""
        from lightning.pytorch.loggers import CSVLogger, WandbLogger

        if "csv" in self.backends:
            self._csv = CSVLogger(save_dir=str(run_dir), name="csv", version="")
        if "wandb" in self.backends and self.wandb.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            # The run is started here and handed to Lightning: its own wandb.init passes a
            # deprecated setting (`anonymous`) that makes W&B print a warning in every run.
            run = wandb.init(
                dir=str(run_dir),
                name=run_name,
                project=self.wandb.project,
                entity=self.wandb.entity,
                group=self.wandb.group,
                tags=list(self.wandb.tags),
                mode=self.wandb.mode,
                config=config,
            )
            self._wandb = WandbLogger(experiment=run, save_dir=str(run_dir))
        return self.loggers

    @property
    def loggers(self) -> list[Any]:
        """The Lightning loggers the trainer gets (CSV first, as before)."""
        return [logger for logger in (self._csv, self._wandb) if logger is not None]

    def _wandb_run(self) -> Any:
        return self._wandb.experiment if self._wandb is not None else None

    def log_summary(self, metrics: dict[str, Any]) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, bool))}
        # Intervals ([low, high]) reach the loggers as two scalars each.
        for k, v in metrics.items():
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(
                isinstance(x, (int, float)) for x in v
            ):
                scalars[f"{k}_low"], scalars[f"{k}_high"] = float(v[0]), float(v[1])
        if self._csv is not None:
            self._csv.log_metrics({k: float(v) for k, v in scalars.items()})
            self._csv.save()
        run = self._wandb_run()
        if run is not None:
            run.summary.update(scalars)

    def log_pairs(self, pairs: pd.DataFrame) -> None:
        run = self._wandb_run()
        if run is None or pairs.empty or self.wandb.pairs_sample == 0:
            return
        import wandb

        cols = [
            c
            for c in (
                "prompt_id",
                "chosen",
                "rejected",
                "chosen_reward",
                "rejected_reward",
                "margin",
                "chosen_position",
                "rejected_position",
                "route",
            )
            if c in pairs
        ]
        sample = pairs[cols].head(self.wandb.pairs_sample).astype(str)
        run.log({"pairs": wandb.Table(dataframe=sample)})

    def log_images(self, images: dict[str, Path]) -> None:
        run = self._wandb_run()
        if run is None:
            return
        import wandb

        run.log({name: wandb.Image(str(path)) for name, path in images.items() if path.is_file()})

    def finish(self) -> None:
        if self._wandb is not None:
            import wandb

            self._wandb.finalize("success")
            wandb.finish()

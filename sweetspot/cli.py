"""The ``sweetspot`` command: a Hydra app (``sweetspot key=value ...``, ``-m`` for sweeps) and
``sweetspot report DIR`` for the table and plots of a run or a multirun folder."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from sweetspot.config import config_dir
from sweetspot.data import write_text
from sweetspot.errors import SweetspotError

log = logging.getLogger("sweetspot")


def summary(metrics: dict, run_dir: Path) -> str:
    keys = [
        "select/pairs",
        "pairs/margin/mean",
        "train/loss",
        "eval/reward_reference",
        "eval/reward_trained",
        "eval/win_rate",
        "eval/kl_estimate",
        "run/seconds",
    ]
    width = max(len(k) for k in keys)
    lines = [
        f"  {k:<{width}}  {metrics[k]:.4g}"
        if isinstance(metrics.get(k), float)
        else f"  {k:<{width}}  {metrics.get(k)}"
        for k in keys
        if k in metrics
    ]
    return "\n".join(["", "sweetspot run finished", *lines, f"  run folder: {run_dir}", ""])


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from sweetspot.pipeline import run_pipeline

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun and cfg.logger.get("wandb") and not cfg.logger.wandb.get("group"):
        with open_dict(cfg):  # one W&B group per sweep
            cfg.logger.wandb.group = Path(hc.sweep.dir).name
    try:
        metrics = run_pipeline(cfg, run_dir)
    except SweetspotError as e:
        write_text(f"{e}\n", run_dir / "error.txt")
        log.error("%s", e)
        print(f"sweetspot: {e}", file=sys.stderr)
        if multirun:
            return None
        sys.exit(2)
    except Exception:
        write_text(traceback.format_exc(), run_dir / "error.txt")
        if multirun:  # one failing job must not stop the sweep; the report marks it
            log.exception("job failed")
            return None
        raise
    print(summary(metrics, run_dir))
    return metrics.get("eval/win_rate")


def report_main(argv: list[str]) -> None:
    from sweetspot.report import write_sweep_report

    if len(argv) != 1:
        print("usage: sweetspot report DIR  (a run folder or a multirun folder)", file=sys.stderr)
        sys.exit(2)
    path = write_sweep_report(argv[0])
    print(path.read_text())
    print(f"written: {path} and {path.with_suffix('.csv')}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        report_main(sys.argv[2:])
        return
    hydra_main()

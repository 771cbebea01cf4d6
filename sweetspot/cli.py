"""The ``sweetspot`` command: a Hydra app (``sweetspot key=value ...``, ``-m`` for sweeps) and
``sweetspot report DIR`` for the table and plots of a run or a multirun folder."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from sweetspot import distributed
from sweetspot.cache import worker_rank
from sweetspot.config import config_dir
from sweetspot.console import configure as configure_console
from sweetspot.data import write_text
from sweetspot.errors import ConfigError, SweetspotError

log = logging.getLogger("sweetspot")


SUMMARY_KEYS = (
    ("select/pairs", "pairs selected"),
    ("pairs/margin/mean", "mean pair margin"),
    ("train/steps", "training steps"),
    ("train/loss", "final train loss"),
    ("eval/reward_reference", "reward, reference"),
    ("eval/reward_trained", "reward, trained"),
    ("eval/reward_delta", "reward delta"),
    ("eval/win_rate", "win rate"),
    ("eval/strict_accuracy/trained", "strict accuracy, trained"),
    ("eval/kl_estimate", "KL estimate"),
    ("run/seconds", "run seconds"),
)


def summary(metrics: dict, run_dir: Path) -> str:
    """The closing screen: the headline figures (95% CIs beside the estimates they qualify)
    and where the full report is."""
    width = max(len(label) for _, label in SUMMARY_KEYS)
    lines = []
    for key, label in SUMMARY_KEYS:
        if key not in metrics:
            continue
        value = metrics[key]
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        ci = metrics.get(f"{key}_ci95")
        if isinstance(ci, list | tuple) and len(ci) == 2:
            text += f"  (95% CI {ci[0]:.3g} to {ci[1]:.3g})"
        lines.append(f"  {label:<{width}}  {text}")
    report = run_dir / "report.md"
    where = [f"  report: {report}"] if report.is_file() else []
    return "\n".join(["", "sweetspot run finished", *lines, *where,
                      f"  run folder: {run_dir}", ""])


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    restore_full_error()  # the job's own errors: Hydra's usual report (see run_hydra)
    configure_console(bool(cfg.get("verbose", False)))  # before the pipeline imports anything
    from sweetspot.rounds import run_rounds  # rounds=1 (default): the plain pipeline

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun and cfg.logger.get("wandb") and not cfg.logger.wandb.get("group"):
        with open_dict(cfg):  # one W&B group per sweep
            cfg.logger.wandb.group = Path(hc.sweep.dir).name
    try:
        metrics = run_rounds(cfg, run_dir)
    except SweetspotError as e:
        write_text(f"{e}\n", run_dir / "error.txt")
        print(f"sweetspot: {e}", file=sys.stderr)  # once, on stderr (and in error.txt)
        if multirun:
            return None
        sys.exit(2)
    except Exception:
        write_text(traceback.format_exc(), run_dir / "error.txt")
        if multirun:  # one failing job must not stop the sweep; the report marks it
            log.exception("job failed")
            return None
        raise
    if closes_the_run():
        print(summary(metrics, run_dir))
    return metrics.get("eval/win_rate")


def closes_the_run() -> bool:
    """Whether this process prints the closing summary: rank 0 alone. Under torchrun or srun
    every rank returns from the pipeline; in a one-rank run, so does each worker that
    Lightning's DDP launcher started at ``fit``."""
    ranks = distributed.current()
    return ranks.main if ranks.many else worker_rank() == 0


FULL_ERROR = "HYDRA_FULL_ERROR"
_user_full_error: list[str | None] = []  # the user's HYDRA_FULL_ERROR while run_hydra composes


def restore_full_error() -> None:
    """Put back the HYDRA_FULL_ERROR that ``run_hydra`` replaced (once; no-op otherwise)."""
    if not _user_full_error:
        return
    user = _user_full_error.pop()
    if user is None:
        os.environ.pop(FULL_ERROR, None)
    else:
        os.environ[FULL_ERROR] = user


def run_hydra() -> None:
    """``hydra_main``, with a value the schema refuses at composition (``sampler.n=eight``, a
    key a typed node lacks) reported like every config error: the field named, exit status 2.
    Hydra prints composition errors itself and exits 1 unless HYDRA_FULL_ERROR=1, which lets
    the exception reach here: it is set while Hydra composes, and ``hydra_main`` puts the
    user's value back as the job starts, so errors of the job are reported as before. Other
    composition errors (an unknown option, a malformed override) keep Hydra's message, which
    lists the options, and exit 2 as well: every mistake on the command line exits 2, a job
    that fails at run time exits 1."""
    user = os.environ.get(FULL_ERROR)
    _user_full_error.append(user)
    os.environ[FULL_ERROR] = "1"
    try:
        hydra_main()
    except CompactHydraException as e:
        if user == "1":
            raise
        cause = e.__cause__
        key = getattr(cause, "full_key", None)
        if isinstance(e, ConfigCompositionException) and isinstance(
            cause, OmegaConfBaseException
        ) and key:
            message = str(cause).strip().splitlines()[0]
            override = str(e).strip().splitlines()[:1]  # Hydra's line naming the override
            where = f" ({override[0]})" if override else ""
            print(f"sweetspot: {ConfigError(key, message)}{where}", file=sys.stderr)
            sys.exit(2)
        print(e, file=sys.stderr)  # as Hydra reports it
        if isinstance(cause, OmegaConfBaseException):
            print(cause, file=sys.stderr)
        sys.exit(2)
    finally:
        restore_full_error()


def report_command(args: argparse.Namespace) -> None:
    """``sweetspot report DIR``: rebuild a run's or a sweep's report and print it."""
    from sweetspot.report import write_sweep_report

    path = write_sweep_report(args.dir)
    print(path.read_text())
    print(f"written: {path} and {path.with_suffix('.csv')}")


def command_parser() -> argparse.ArgumentParser:
    """The subcommands. Anything else on the command line goes to Hydra unchanged."""
    parser = argparse.ArgumentParser(
        prog="sweetspot",
        description="Without a subcommand, sweetspot runs the pipeline: `sweetspot key=value ...` "
        "(Hydra overrides; `sweetspot --help` lists the config groups, `-m` sweeps).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    report = commands.add_parser(
        "report",
        help="write and print the report of a run or multirun folder",
        description="Write report.md, report.csv (and plots) for a run folder or a multirun "
        "folder (its numbered jobs), then print report.md.",
    )
    report.add_argument("dir", type=Path, help="a run folder or a multirun folder")
    report.set_defaults(run=report_command, parser=report)
    return parser


SUBCOMMANDS = ("report",)


def main(argv: list[str] | None = None) -> None:
    """``sweetspot report DIR`` goes to its subcommand; every other command line to Hydra."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in SUBCOMMANDS:
        parsed = command_parser().parse_args(args)
        if not parsed.dir.is_dir():
            parsed.parser.error(f"{parsed.dir} is not a folder")
        try:
            parsed.run(parsed)
        except FileNotFoundError as e:  # a folder without run folders
            parsed.parser.error(str(e))
        return
    if argv is None:
        run_hydra()
        return
    saved = sys.argv  # Hydra reads its command line from sys.argv
    sys.argv = [saved[0], *argv]
    try:
        run_hydra()
    finally:
        sys.argv = saved

"""Reports: one run's ``report.md`` and plots, and ``sweetspot report DIR`` over a multirun.

The per-run plot is the picture researchers draw of the sweet spot: a prompt's reward
distribution with mu +- k*sigma marked and the chosen/rejected responses highlighted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from hydra.experimental.callback import Callback

from sweetspot.data import read_table, write_text

SIGMAS = (-2, -1, 0, 1, 2)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def plot_reward_distribution(
    responses: pd.DataFrame, pairs: pd.DataFrame, path: Path, prompts_shown: int = 4
) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if pairs.empty:
        return None
    shown = pairs["prompt_id"].drop_duplicates().head(prompts_shown).tolist()
    fig, axes = plt.subplots(len(shown), 1, figsize=(7, 1.8 * len(shown)), squeeze=False)
    for ax, pid in zip(axes[:, 0], shown, strict=True):
        rows = responses[responses["prompt_id"] == pid]
        r = rows["reward"].to_numpy(dtype=float)
        mu, sigma = float(np.nanmean(r)), float(np.nanstd(r))
        ax.scatter(r, np.zeros_like(r), alpha=0.5, color="gray", label="responses")
        for k in SIGMAS:
            ax.axvline(mu + k * sigma, color="steelblue", lw=0.8, ls="--" if k else "-")
            ax.text(mu + k * sigma, 0.6, f"{k:+d}σ" if k else "μ", ha="center", fontsize=7)
        pair = pairs[pairs["prompt_id"] == pid].iloc[0]
        ax.scatter(
            [pair["chosen_reward"]],
            [0],
            color="green",
            s=80,
            marker="^",
            label=f"chosen ({pair.get('chosen_position', '')})",
        )
        ax.scatter(
            [pair["rejected_reward"]],
            [0],
            color="red",
            s=80,
            marker="v",
            label=f"rejected ({pair.get('rejected_position', '')})",
        )
        ax.set_yticks([])
        ax.set_ylim(-1, 1)
        ax.set_title(str(pid), fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
    axes[-1, 0].set_xlabel("reward")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_run_report(run_dir: str | Path) -> dict[str, Path]:
    """``report.md`` and ``reward_distribution.png`` in a finished run folder."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    responses = read_table(run_dir / "responses.parquet")
    pairs = read_table(run_dir / "pairs.parquet")
    images = {}
    plot = plot_reward_distribution(responses, pairs, run_dir / "reward_distribution.png")
    if plot:
        images["reward_distribution"] = plot
    groups: dict[str, list[dict]] = {}
    for key, value in metrics.items():
        section = key.split("/", 1)[0]
        groups.setdefault(section, []).append({"metric": key, "value": value})
    parts = [f"# sweetspot run: {run_dir.name}\n"]
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        parts.append("Overrides: `" + " ".join(yaml.safe_load(overrides.read_text()) or []) + "`\n")
    for section in sorted(groups):
        parts.append(f"## {section}\n\n" + markdown_table(groups[section], ["metric", "value"]))
    if plot:
        parts.append("## reward distribution\n\n![rewards](reward_distribution.png)\n")
    write_text("\n".join(parts), run_dir / "report.md")
    return images


def job_dirs(root: Path) -> list[Path]:
    """Run folders under ``root`` (itself, or the numbered jobs of a multirun)."""
    if (root / ".hydra").is_dir():
        return [root]
    return sorted(
        (p for p in root.iterdir() if (p / ".hydra").is_dir()), key=lambda p: (len(p.name), p.name)
    )


def collect(root: str | Path) -> pd.DataFrame:
    """One row per job: its overrides, status and metrics."""
    rows = []
    for job in job_dirs(Path(root)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        row: dict[str, Any] = {"job": job.name, "overrides": " ".join(overrides or [])}
        for item in overrides or []:
            if "=" in item:
                k, v = item.split("=", 1)
                row[f"override/{k.lstrip('+~')}"] = v
        metrics_file, error_file = job / "metrics.json", job / "error.txt"
        if metrics_file.is_file():
            row["status"] = "ok"
            row.update(json.loads(metrics_file.read_text()))
        else:
            row["status"] = "failed"
            row["error"] = (
                error_file.read_text().strip()[:300]
                if error_file.is_file()
                else "no metrics.json (killed or still running)"
            )
        rows.append(row)
    return pd.DataFrame(rows)


HEADLINE = (
    "eval/win_rate",
    "eval/reward_trained",
    "eval/reward_reference",
    "eval/kl_estimate",
    "pairs/margin/mean",
    "select/pairs",
    "train/loss",
    "run/seconds",
)


def write_sweep_report(root: str | Path) -> Path:
    """``report.md`` + ``report.csv`` (+ plots) for a run or multirun folder."""
    root = Path(root)
    table = collect(root)
    if table.empty:
        raise FileNotFoundError(f"no run folders (with .hydra/) under {root}")
    table.to_csv(root / "report.csv", index=False)
    override_cols = [c for c in table.columns if c.startswith("override/")]
    cols = ["job", "status", *override_cols, *[c for c in HEADLINE if c in table.columns]]
    if "error" in table.columns:
        cols.append("error")
    parts = [f"# sweetspot report: {root}\n", markdown_table(table.to_dict("records"), cols)]
    for plot in plot_sweep(table, root):
        parts.append(f"![{plot.stem}]({plot.name})\n")
    write_text("\n".join(parts), root / "report.md")
    return root / "report.md"


def plot_sweep(table: pd.DataFrame, root: Path) -> list[Path]:
    """Metric vs N per selection strategy, when the sweep varied ``sampler.n``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_col = next((c for c in table.columns if c.endswith("sampler.n") or c.endswith("use_n")), None)
    if n_col is None or "eval/win_rate" not in table or table[n_col].nunique() < 2:
        return []
    strategy = "override/selection" if "override/selection" in table else None
    fig, ax = plt.subplots(figsize=(6, 4))
    ok = table[table["status"] == "ok"].copy()
    ok["_n"] = ok[n_col].astype(float)
    for name, group in ok.groupby(strategy) if strategy else [("all", ok)]:
        group = group.sort_values("_n")
        ax.plot(group["_n"], group["eval/win_rate"], marker="o", label=str(name))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (responses per prompt)")
    ax.set_ylabel("win rate vs reference")
    ax.legend()
    fig.tight_layout()
    path = root / "win_rate_vs_n.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


class SweepReportCallback(Callback):
    """A Hydra callback: writes the sweep's report when a multirun ends (``hydra/default.yaml``)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        import logging

        try:
            path = write_sweep_report(config.hydra.sweep.dir)
            logging.getLogger(__name__).info("sweep report: %s", path)
        except Exception as e:  # a report must never turn a finished sweep into a failure
            logging.getLogger(__name__).error("could not write the sweep report: %s", e)

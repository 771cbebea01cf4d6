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
from tabulate import tabulate

from sweetspot import stats
from sweetspot.data import read_table, write_text

SIGMAS = (-2, -1, 0, 1, 2)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_fmt(float(x)) for x in v) + "]"
    return str(v)


def _cell(v: Any) -> str:
    """A value as one Markdown table cell: formatted, on one line, its pipes escaped."""
    return " ".join(_fmt(v).split("\n")).replace("|", "\\|")


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub Markdown table (tabulate) of ``columns`` of ``rows``; missing cells are empty.

    Cells are formatted here (``_fmt``), so tabulate must not re-parse them as numbers.
    """
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    return tabulate(cells, headers=columns, tablefmt="github", disable_numparse=True) + "\n"


def _num(v: Any, signed: bool = False) -> str:
    """A figure for a headline: 3 decimals, a sign when it is a difference, n/a when missing."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    v = 0.0 if abs(v) < 5e-4 else v  # no "-0.000"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _ci(bounds: Any, signed: bool = False) -> str:
    if bounds is None or len(bounds) != 2 or not all(math.isfinite(float(b)) for b in bounds):
        return "n/a"
    return f"[{_num(float(bounds[0]), signed)}, {_num(float(bounds[1]), signed)}]"


def _verdict(bounds: Any, null: float, what: str) -> str:
    if bounds is None or len(bounds) != 2:
        return ""
    low, high = float(bounds[0]), float(bounds[1])
    if low > null:
        return f"{what}: the 95% interval lies above {null:g}."
    if high < null:
        return f"{what}: the 95% interval lies below {null:g}."
    return f"{what}: the 95% interval includes {null:g}, so no difference is shown."


def headline(metrics: dict[str, Any]) -> str:
    """The run's answer first: did training beat the reference, by how much, how surely."""
    m = metrics
    rows = []
    if "eval/reward_trained" in m:
        rows.append(("mean reward", _num(m.get("eval/reward_trained")),
                     _num(m.get("eval/reward_reference")), _num(m.get("eval/reward_delta"), True),
                     _ci(m.get("eval/reward_delta_ci95"), True)))
    if "eval/win_rate" in m:
        rows.append(("win rate over reference (ties 1/2)", _num(m["eval/win_rate"]), "", "",
                     _ci(m.get("eval/win_rate_ci95"))))
    for key, label in (("eval/strict_accuracy", "strict accuracy, prompt level"),
                       ("eval/strict_accuracy_instruction", "strict accuracy, instruction level")):
        if f"{key}/trained" in m:
            t, r = m[f"{key}/trained"], m.get(f"{key}/reference")
            rows.append((label, _num(t), _num(r), _num(t - r, True) if r is not None else "",
                         ""))
    if "eval/kl_estimate" in m:
        rows.append(("KL estimate, trained vs reference", _num(m["eval/kl_estimate"]), "", "",
                     ""))
    parts = ["## Headline\n"]
    if rows:
        columns = ["", "trained", "reference", "trained - reference", "95% CI"]
        parts.append(markdown_table([dict(zip(columns, r, strict=True)) for r in rows], columns))
        n = m.get("eval/prompts")
        notes = [f"On {n} held-out prompts; intervals: paired bootstrap over prompts "
                 f"({stats.RESAMPLES:,} resamples)." if n is not None else ""]
        notes.append(_verdict(m.get("eval/reward_delta_ci95"), 0.0, "Reward difference"))
        notes.append(_verdict(m.get("eval/win_rate_ci95"), 0.5, "Win rate"))
        parts.append(" ".join(x for x in notes if x) + "\n")
    else:
        parts.append("No evaluation in this run (until != evaluate).\n")
    facts = [f"{label} {_fmt(m[key])}" for key, label in (
        ("select/pairs", "pairs:"), ("train/steps", "training steps:"),
        ("train/loss", "final train loss:"), ("run/seconds", "run seconds:")) if key in m]
    if facts:
        parts.append("; ".join(facts) + ".\n")
    return "\n".join(parts)


def _text(value: Any) -> str:
    """A prompt (chat messages or text) or a response as plain text: the last user turn."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    messages = list(value)
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last = (users or messages)[-1] if (users or messages) else ""
    return str(last.get("content", "")) if isinstance(last, dict) else str(last)


def _quote(text: str, limit: int) -> str:
    """Text in a fenced block (fence longer than any backtick run in it), cut at ``limit``."""
    text = text.strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + f" [... {len(text) - limit} more characters]"
    run, longest = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text or '(empty)'}\n{fence}\n"


def example_pairs(pairs: pd.DataFrame, k: int = 3, limit: int = 400) -> str:
    """``k`` pairs spread over the margin (largest, median, smallest), texts cut to ``limit``."""
    if pairs.empty or not {"chosen", "rejected"} <= set(pairs.columns):
        return ""
    ordered = pairs.sort_values("margin", ascending=False, kind="stable") if "margin" in pairs \
        else pairs
    picks = sorted({round(i * (len(ordered) - 1) / max(1, k - 1)) for i in range(k)})
    parts = [f"## Example pairs\n\n{len(picks)} of {len(pairs)} pairs: largest, median and "
             "smallest reward margin.\n"]
    for number, i in enumerate(picks, 1):
        row = ordered.iloc[i]
        where = ", ".join(
            f"{label} {row[col]}" for col, label in (("chosen_position", "chosen at"),
                                                     ("rejected_position", "rejected at"))
            if col in row and isinstance(row[col], str) and row[col])
        margin = f"margin {_num(float(row['margin']))}" if "margin" in row else ""
        parts.append(f"### {number}. prompt `{row['prompt_id']}` ("
                     + "; ".join(x for x in (margin, where) if x) + ")\n")
        if "prompt" in row:
            parts.append("Prompt:\n\n" + _quote(_text(row["prompt"]), limit))
        parts.append(f"Chosen (reward {_num(float(row['chosen_reward']))}):\n\n"
                     + _quote(_text(row["chosen"]), limit))
        parts.append(f"Rejected (reward {_num(float(row['rejected_reward']))}):\n\n"
                     + _quote(_text(row["rejected"]), limit))
    return "\n".join(parts)


def stack_dots(rewards: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """A dot plot's heights: rewards closer than ``width`` stack upwards instead of overlapping.

    Rewards are taken in increasing order; each goes one level above the highest dot within
    ``width`` to its left, so no two dots at one level are closer than ``width``. Returns the
    heights (0, 1, ...) in the input's order and the order used.
    """
    order = np.argsort(rewards, kind="stable")
    heights = np.zeros(len(rewards), dtype=int)
    placed: list[tuple[float, int]] = []
    for i in order:
        near = [h for x, h in placed if rewards[i] - x < width]
        heights[i] = (max(near) + 1) if near else 0
        placed.append((float(rewards[i]), int(heights[i])))
    return heights, order


def plot_reward_distribution(
    responses: pd.DataFrame, pairs: pd.DataFrame, path: Path, prompts_shown: int = 4
) -> Path | None:
    """Every response of a few prompts as a stacked dot plot, mu +- k sigma marked.

    Equal (or nearly equal) rewards stack instead of hiding one another, a stack of equal
    rewards is labelled with its count, and the pair's chosen and rejected responses are the
    green and red dots.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if pairs.empty:
        return None
    shown = pairs["prompt_id"].drop_duplicates().head(prompts_shown).tolist()
    rows_of = {pid: responses[responses["prompt_id"] == pid] for pid in shown}
    bins = 60  # dots per row at most: one dot's width is 1/60 of the axis
    heights_of, widths = {}, {}
    for pid, rows in rows_of.items():
        r = rows["reward"].to_numpy(dtype=float)
        r = r[np.isfinite(r)]
        mu, sigma = (float(r.mean()), float(r.std())) if r.size else (0.0, 0.0)
        lo = min([*r, mu - 2 * sigma]) if r.size else 0.0
        hi = max([*r, mu + 2 * sigma]) if r.size else 1.0
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        widths[pid] = (lo - pad, hi + pad)
        heights_of[pid] = stack_dots(r, (hi - lo + 2 * pad) / bins)[0]
    tallest = max((int(h.max()) + 1 for h in heights_of.values() if h.size), default=1)
    row_h = max(1.8, 0.9 + 0.14 * tallest)
    fig, axes = plt.subplots(len(shown), 1, figsize=(8.5, row_h * len(shown)), squeeze=False)
    dot = 0.8 * min(7 * 0.85 * 72 / bins, row_h * 0.6 * 72 / (tallest + 2))  # points
    for ax, pid in zip(axes[:, 0], shown, strict=True):
        rows = rows_of[pid]
        finite = rows[np.isfinite(rows["reward"].to_numpy(dtype=float))]
        r = finite["reward"].to_numpy(dtype=float)
        y = heights_of[pid].astype(float)
        mu, sigma = (float(r.mean()), float(r.std())) if r.size else (0.0, 0.0)
        ax.scatter(r, y, s=dot**2, color="gray", label=f"responses ({len(r)})", zorder=2)
        for k in SIGMAS:
            ax.axvline(mu + k * sigma, color="steelblue", lw=0.8, ls="--" if k else "-", zorder=1)
            ax.text(mu + k * sigma, tallest + 0.6, f"{k:+d}σ" if k else "μ", ha="center",
                    fontsize=7)
        values, counts = np.unique(r, return_counts=True)
        for value, count in zip(values, counts, strict=True):
            if count > 1:
                top = y[r == value].max()
                ax.text(value, top + 0.55, f"×{count}", ha="center", fontsize=6)
        pair = pairs[pairs["prompt_id"] == pid].iloc[0]
        ids = finite["sample_id"].to_numpy() if "sample_id" in finite else None
        for side, color in (("chosen", "green"), ("rejected", "red")):
            at = np.flatnonzero(ids == pair[f"{side}_sample_id"]) if (
                ids is not None and f"{side}_sample_id" in pair) else np.array([], dtype=int)
            if at.size == 0:  # no ids: the first response with the pair's reward
                at = np.flatnonzero(r == pair[f"{side}_reward"])[:1]
            ax.scatter(r[at], y[at], s=(1.6 * dot) ** 2, facecolor=color, edgecolor="black",
                       lw=0.6, zorder=3,
                       label=f"{side} ({pair.get(f'{side}_position', '')})")
        ax.set_yticks([])
        ax.set_ylim(-0.8, tallest + 1.4)
        ax.set_xlim(*widths[pid])
        ax.set_title(f"{pid}: {len(r)} responses, {len(values)} distinct rewards, "
                     f"μ={mu:.3f} σ={sigma:.3f}", fontsize=8)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes[-1, 0].set_xlabel("reward (equal rewards stacked; ×k = k responses with that reward)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _with_bounds(row: dict, column: str, signed: bool = False) -> str:
    """``estimate [low, high]`` from a table row's ``column``, ``column_low``, ``column_high``."""
    value = row.get(column)
    if value is None or _missing(float(value)):
        return ""
    bounds = [row.get(f"{column}_low"), row.get(f"{column}_high")]
    interval = "n/a" if any(b is None for b in bounds) else _ci(bounds, signed)
    return f"{_num(float(value), signed)} {interval}"


def pilot_section(run_dir: Path) -> str:
    """The pilot's table (``pilot.csv``, written by ``selection=pilot``): each candidate pair's
    short run against the untrained policy and against the pick, with CIs. Empty without one."""
    path = run_dir / "pilot.csv"
    if not path.is_file():
        return ""
    table = pd.read_csv(path)
    rows = []
    for r in table.to_dict("records"):
        rows.append({
            "pair": f"**{r['pair']}** (picked)" if bool(r.get("picked")) else r["pair"],
            "pairs": int(r["pairs"]),
            "steps": "" if r.get("steps") is None or _missing(float(r["steps"]))
            else int(r["steps"]),
            "reward - untrained (95% CI)": _with_bounds(r, "reward_delta", True),
            "win rate (95% CI)": _with_bounds(r, "win_rate"),
            "vs pick (95% CI)": _with_bounds(r, "vs_pick", True),
        })
    columns = ["pair", "pairs", "steps", "reward - untrained (95% CI)", "win rate (95% CI)",
               "vs pick (95% CI)"]
    return ("## Pilot: which positions suit this model\n\n"
            "A short LoRA run per candidate (chosen/rejected) pair on a subset of the train "
            "prompts, each scored on train prompts kept back from it (not the held-out prompts "
            "below); intervals: paired bootstrap over those prompts. The full run trained on the "
            "picked pair. Table: `pilot.csv`.\n\n" + markdown_table(rows, columns))


def plot_rounds(table: pd.DataFrame, path: Path) -> Path | None:
    """Held-out mean reward by round, round 0 being the initial policy; error bars: the 95% CI
    of each round's difference to the initial policy (paired bootstrap), drawn around its
    reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = table[table["reward"].notna()]
    if table.empty:
        return None
    start = float(table["reward_initial"].iloc[0])
    x = [0, *table["round"].astype(int)]
    y = [start, *table["reward"].astype(float)]
    low = [0.0, *(table["reward_delta"] - table["reward_delta_low"]).fillna(0.0)]
    high = [0.0, *(table["reward_delta_high"] - table["reward_delta"]).fillna(0.0)]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=4)
    ax.axhline(start, color="grey", lw=0.8, ls="--", label="initial policy")
    ax.set_xticks(x)
    ax.set_xlabel("round (0: initial policy)")
    ax.set_ylabel("mean held-out reward")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rounds_section(run_dir: Path) -> tuple[str, Path | None]:
    """The by-round table and plot of an iterative run (``rounds.csv``, ``sweetspot.rounds``);
    empty without one."""
    path = run_dir / "rounds.csv"
    if not path.is_file():
        return "", None
    table = pd.read_csv(path)
    plot = plot_rounds(table, run_dir / "rounds.png")
    rows = []
    for r in table.to_dict("records"):
        rows.append({
            "round": int(r["round"]),
            "held-out reward": r.get("reward"),
            "- initial (95% CI)": _with_bounds(r, "reward_delta", True),
            "win rate vs initial (95% CI)": _with_bounds(r, "win_rate"),
            "KL to initial": r.get("kl_estimate"),
            "reward of the round's samples": r.get("sample_reward"),
            "pairs": r.get("pairs"),
        })
    columns = list(rows[0]) if rows else []
    text = ("## Rounds\n\nEach round sampled from the last round's policy and trained from it; "
            "every round is evaluated on the same held-out prompts against the initial policy "
            "(intervals: paired bootstrap over prompts). The reward of a round's samples is that "
            "of its own train-prompt samples, i.e. of the policy it started from. "
            "Table: `rounds.csv`; each round's run folder: `round<r>/`.\n\n"
            + markdown_table(rows, columns))
    if plot:
        text += "\n![held-out reward by round](rounds.png)\n"
    return text, plot


def write_run_report(run_dir: str | Path) -> dict[str, Path]:
    """``report.md`` and ``reward_distribution.png`` in a finished run folder.

    Order: the headline (reward difference and win rate with their intervals, strict accuracy,
    KL), three example pairs, the reward picture, then every metric by section.
    """
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
    parts.append(headline(metrics))
    rounds, rounds_plot = rounds_section(run_dir)  # iterative runs (rounds.csv)
    if rounds_plot:
        images["rounds"] = rounds_plot
    parts += [x for x in (rounds, pilot_section(run_dir)) if x]  # selection=pilot (pilot.csv)
    examples = example_pairs(pairs)
    if examples:
        parts.append(examples)
    if plot:
        parts.append("## Reward distribution\n\nEvery response of the first prompts with a pair; "
                     "the chosen (green) and rejected (red) responses highlighted.\n\n"
                     "![rewards](reward_distribution.png)\n")
    parts.append("## Details\n")
    for section in sorted(groups):
        parts.append(f"### {section}\n\n" + markdown_table(groups[section], ["metric", "value"]))
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
    "eval/reward_delta",
    "eval/reward_delta_ci95",
    "eval/win_rate",
    "eval/win_rate_ci95",
    "eval/strict_accuracy/trained",
    "eval/reward_trained",
    "eval/reward_reference",
    "eval/kl_estimate",
    "pairs/margin/mean",
    "select/pairs",
    "train/loss",
    "run/seconds",
)
SEED_KEYS = ("seed", "train_seed")  # overrides that make replicates, not configurations
# metric -> the per-job bootstrap interval whose bounds are averaged beside the seeds' interval
SEED_METRICS = {
    "eval/reward_delta": "eval/reward_delta_ci95",
    "eval/win_rate": "eval/win_rate_ci95",
    "eval/strict_accuracy/trained": None,
    "eval/strict_accuracy/reference": None,
}


def configurations(table: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: the finished jobs that differ only in a seed, summarised.

    For each metric of ``SEED_METRICS``: the mean over seeds, its t 95% interval (``_ci95``; NaN
    with one seed), and the mean of the jobs' own paired-bootstrap bounds (``_job_ci95``), which
    says how sure one run is, where the seeds' interval says how much training varies.
    """
    from sweetspot.stats import seed_interval

    ok = table[table["status"] == "ok"] if "status" in table else table
    seed_cols = [f"override/{k}" for k in SEED_KEYS if f"override/{k}" in table]
    config_cols = [c for c in table.columns if c.startswith("override/") and c not in seed_cols]
    rows = []
    if ok.empty:
        return pd.DataFrame()
    keyed = ok.assign(**{c: ok[c].fillna("").astype(str) for c in config_cols})
    groups = keyed.groupby(config_cols, sort=False, dropna=False) if config_cols else [
        ((), keyed)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(config_cols, key, strict=True))
        row["seeds"] = len(group)
        row["jobs"] = " ".join(str(j) for j in group["job"])
        for metric, job_ci in SEED_METRICS.items():
            if metric not in group:
                continue
            values = [float(v) for v in group[metric] if v is not None and not _missing(v)]
            if not values:
                continue
            interval = seed_interval(values)
            row[metric] = interval.estimate
            row[f"{metric}_ci95"] = interval.bounds()
            if job_ci and job_ci in group:
                bounds = [b for b in group[job_ci] if isinstance(b, (list, np.ndarray))]
                if bounds:
                    row[f"{metric}_job_ci95"] = np.mean(np.asarray(bounds, float), axis=0).tolist()
        rows.append(row)
    return pd.DataFrame(rows)


def _missing(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def _with_ci(row: dict, metric: str, signed: bool = False) -> str:
    if metric not in row or _missing(row[metric]):
        return ""
    text = _num(row[metric], signed)
    if row.get("seeds", 0) >= 2:
        text += " " + _ci(row.get(f"{metric}_ci95"), signed)
    return text


def configurations_markdown(configs: pd.DataFrame) -> str:
    """The per-configuration table: mean over seeds [t 95% CI], mean per-job bootstrap CI."""
    if configs.empty:
        return ""
    varying = [c for c in configs.columns if c.startswith("override/")
               and configs[c].nunique() > 1]
    records = configs.to_dict("records")
    cols = [*varying, "seeds"]
    out = []
    for r in records:
        row = {c: r[c] for c in cols}
        row["reward delta"] = _with_ci(r, "eval/reward_delta", True)
        row["reward delta, run CI"] = _ci(r.get("eval/reward_delta_job_ci95"), True)
        row["win rate"] = _with_ci(r, "eval/win_rate")
        row["win rate, run CI"] = _ci(r.get("eval/win_rate_job_ci95"))
        row["strict acc. trained"] = _with_ci(r, "eval/strict_accuracy/trained")
        row["strict acc. reference"] = _with_ci(r, "eval/strict_accuracy/reference")
        out.append(row)
    shown = cols + [c for c in ("reward delta", "reward delta, run CI", "win rate",
                                "win rate, run CI", "strict acc. trained",
                                "strict acc. reference")
                    if any(o[c] not in ("", "n/a") for o in out)]
    return (
        "## Per configuration\n\n"
        "Jobs that differ only in `seed` or `train_seed` form one configuration. Each cell: the "
        "mean over its seeds, with the t 95% interval across seeds when there are two or more. "
        "\"run CI\": the mean of the jobs' own paired-bootstrap 95% intervals over prompts.\n\n"
        + markdown_table(out, shown)
    )


def write_sweep_report(root: str | Path) -> Path:
    """``report.md`` + ``report.csv`` + ``report_configurations.csv`` (+ plots) for a folder."""
    root = Path(root)
    table = collect(root)
    if table.empty:
        raise FileNotFoundError(f"no run folders (with .hydra/) under {root}")
    table.to_csv(root / "report.csv", index=False)
    configs = configurations(table)
    if not configs.empty:
        configs.to_csv(root / "report_configurations.csv", index=False)
    override_cols = [c for c in table.columns if c.startswith("override/")]
    cols = ["job", "status", *override_cols, *[c for c in HEADLINE if c in table.columns]]
    if "error" in table.columns:
        cols.append("error")
    parts = [f"# sweetspot report: {root}\n", configurations_markdown(configs),
             "## Jobs\n\n" + markdown_table(table.to_dict("records"), cols)]
    for plot in plot_sweep(table, root, configs):
        parts.append(f"![{plot.stem}]({plot.name})\n")
    write_text("\n".join(p for p in parts if p), root / "report.md")
    return root / "report.md"


def _error_bar(row: dict, metric: str) -> tuple[float, float] | None:
    """Half-widths below/above the mean: the seeds' t interval, else the run's bootstrap one."""
    for key in (f"{metric}_ci95", f"{metric}_job_ci95"):
        bounds = row.get(key)
        if isinstance(bounds, (list, np.ndarray)) and len(bounds) == 2 and all(
                math.isfinite(float(b)) for b in bounds):
            return row[metric] - float(bounds[0]), float(bounds[1]) - row[metric]
    return None


def plot_sweep(
    table: pd.DataFrame, root: Path, configs: pd.DataFrame | None = None
) -> list[Path]:
    """Win rate and reward delta vs N per configuration, with 95% error bars.

    Drawn when the sweep varied ``sampler.n`` (or ``sampler.use_n``). A point is the mean over
    its seeds; its bar is the t interval across seeds where there are two or more, else the
    run's paired-bootstrap interval over prompts.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = configurations(table) if configs is None else configs
    n_col = next((c for c in configs.columns if c.endswith("sampler.n") or c.endswith("use_n")),
                 None)
    if configs.empty or n_col is None or configs[n_col].nunique() < 2:
        return []
    series_cols = [c for c in configs.columns if c.startswith("override/") and c != n_col
                   and configs[c].nunique() > 1]
    configs = configs.assign(_n=configs[n_col].astype(float))
    paths = []
    for metric, null, label, name in (
        ("eval/win_rate", 0.5, "win rate vs reference", "win_rate_vs_n.png"),
        ("eval/reward_delta", 0.0, "reward delta (trained - reference)", "reward_delta_vs_n.png"),
    ):
        if metric not in configs or configs[metric].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        groups = configs.groupby(series_cols, sort=False) if series_cols else [("all", configs)]
        for offset, (key, group) in enumerate(groups):
            group = group.sort_values("_n")
            rows = group.to_dict("records")
            bars = [_error_bar(r, metric) or (0.0, 0.0) for r in rows]
            shift = 2 ** (0.03 * (offset - (len(groups) - 1) / 2))  # bars of series side by side
            tag = key if isinstance(key, str) else " ".join(str(k) for k in np.atleast_1d(key))
            seeds = "/".join(str(r["seeds"]) for r in rows)
            ax.errorbar(group["_n"] * shift, group[metric], yerr=np.array(bars).T, marker="o",
                        capsize=3, label=f"{tag} (seeds: {seeds})")
        ax.axhline(null, color="gray", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (responses per prompt)")
        ax.set_ylabel(label)
        ax.set_title("mean over seeds; bars: 95% CI (t over seeds, or paired bootstrap "
                     "for one seed)", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = root / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


class SweepReportCallback(Callback):
    """A Hydra callback: writes the sweep's report when a multirun ends (``hydra/default.yaml``)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        import logging

        try:
            path = write_sweep_report(config.hydra.sweep.dir)
            logging.getLogger(__name__).info("sweep report: %s", path)
        except Exception as e:  # a report must never turn a finished sweep into a failure
            logging.getLogger(__name__).error("could not write the sweep report: %s", e)

"""Run and multirun reports on hand-made run folders (no pipeline run: these stay fast)."""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sweetspot.report import (
    configurations,
    markdown_table,
    stack_dots,
    write_run_report,
    write_sweep_report,
)

T_975_DF2 = 4.302652729911275  # t quantile for 3 seeds, from tables


def make_job(folder: Path, overrides: list[str], metrics: dict | None) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    else:
        (folder / "error.txt").write_text("ValueError: boom")


def make_run(folder: Path) -> None:
    make_job(folder, ["experiment=tiny"], {
        "eval/prompts": 64, "eval/reward_trained": 0.402, "eval/reward_reference": 0.332,
        "eval/reward_delta": 0.07, "eval/reward_delta_ci95": [0.003, 0.14],
        "eval/win_rate": 0.589, "eval/win_rate_ci95": [0.49, 0.68],
        "eval/strict_accuracy/trained": 0.25, "eval/strict_accuracy/reference": 0.2,
        "eval/kl_estimate": 3.1, "select/pairs": 103, "train/loss": 0.61,
    })
    rewards = {"p0": [0.5, 0.5, 0.5, 0.9, 0.1, 0.5, 0.9, 0.2], "p1": [0.3, 0.7, 0.7, 0.1],
               "p2": [1.0, 0.0, 0.4, 0.4]}
    rows = [{"prompt_id": p, "sample_id": i, "reward": r}
            for p, rs in rewards.items() for i, r in enumerate(rs)]
    pd.DataFrame(rows).to_parquet(folder / "responses.parquet")
    pairs = pd.DataFrame({
        "prompt_id": ["p0", "p1", "p2"],
        "prompt": [[{"role": "user", "content": f"Write about topic {i}."}] for i in range(3)],
        "chosen": ["A" * 1000, "fine answer", "has ``` backticks"],
        "rejected": ["bad", "", "worse"],
        "chosen_sample_id": [3, 1, 0], "rejected_sample_id": [4, 0, 1],
        "chosen_reward": [0.9, 0.7, 1.0], "rejected_reward": [0.1, 0.3, 0.0],
        "margin": [0.8, 0.4, 1.0],
        "chosen_position": ["max"] * 3, "rejected_position": ["mu-2sigma"] * 3,
    })
    pairs.to_parquet(folder / "pairs.parquet")


def test_run_report_leads_with_the_headline_then_examples_then_details(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run)
    images = write_run_report(run)
    text = (run / "report.md").read_text()
    order = [text.index(h) for h in ("## Headline", "## Example pairs", "## Details")]
    assert order == sorted(order)
    headline = text[order[0]:order[1]]
    assert "+0.070" in headline and "[+0.003, +0.140]" in headline  # delta and its CI
    assert "0.589" in headline and "[0.490, 0.680]" in headline  # win rate and its CI
    assert "0.250" in headline and "0.200" in headline and "3.100" in headline
    assert "lies above 0" in headline and "includes 0.5" in headline
    examples = text[order[1]:order[2]]
    assert examples.count("### ") == 3
    # largest margin first (p2, 1.0), then the median (p0, 0.8), then the smallest (p1, 0.4)
    assert examples.index("`p2`") < examples.index("`p0`") < examples.index("`p1`")
    assert "A" * 400 in examples and "A" * 401 not in examples
    assert "[... 600 more characters]" in examples
    assert "````text\nhas ``` backticks\n````" in examples  # a fence the text cannot close
    assert "Write about topic 1." in examples and "(empty)" in examples
    assert images["reward_distribution"].is_file()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stacked_dots_never_overlap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rewards = np.round(rng.uniform(0, 1, size=40), 1)  # many exact ties
    width = 0.03
    heights, _ = stack_dots(rewards, width)
    for i, j in itertools.combinations(range(len(rewards)), 2):
        if heights[i] == heights[j]:
            assert abs(rewards[i] - rewards[j]) >= width
    for value in np.unique(rewards):  # k equal rewards occupy k levels
        assert len(set(heights[rewards == value])) == (rewards == value).sum()


def test_sweep_groups_seeds_into_configurations(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    deltas = {}
    job = 0
    for n, selection, seed in itertools.product((4, 8), ("max_min", "sweet_spot"), (0, 1, 2)):
        delta = 0.01 * n + (0.02 if selection == "sweet_spot" else 0) + 0.01 * seed
        deltas.setdefault((n, selection), []).append(delta)
        make_job(sweep / str(job), [f"sampler.use_n={n}", f"selection={selection}",
                                    f"train_seed={seed}"], {
            "eval/reward_delta": delta, "eval/reward_delta_ci95": [delta - 0.05, delta + 0.07],
            "eval/win_rate": 0.5 + delta, "eval/win_rate_ci95": [0.4, 0.6 + seed * 0.03],
            "eval/strict_accuracy/trained": 0.3, "eval/strict_accuracy/reference": 0.2,
        })
        job += 1
    make_job(sweep / str(job), ["sampler.use_n=8", "selection=max_min", "train_seed=3"], None)
    table_configs = configurations(pd.DataFrame(
        [dict(status="ok", job=0, **{"override/x": "a", "eval/win_rate": 0.6})]))
    assert table_configs.loc[0, "seeds"] == 1 and math.isnan(
        table_configs.loc[0, "eval/win_rate_ci95"][0])

    report = write_sweep_report(sweep)
    configs = pd.read_csv(sweep / "report_configurations.csv")
    assert len(configs) == 4 and (configs["seeds"] == 3).all()  # the failed job is not a seed
    row = configs[(configs["override/sampler.use_n"].astype(str) == "8")
                  & (configs["override/selection"] == "sweet_spot")].iloc[0]
    values = deltas[(8, "sweet_spot")]
    mean, half = statistics.fmean(values), T_975_DF2 * statistics.stdev(values) / math.sqrt(3)
    assert row["eval/reward_delta"] == pytest.approx(mean)
    low, high = json.loads(row["eval/reward_delta_ci95"])
    assert (low, high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert json.loads(row["eval/win_rate_job_ci95"]) == pytest.approx([0.4, 0.63])
    text = report.read_text()
    assert text.index("## Per configuration") < text.index("## Jobs")
    assert f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]" in text
    assert "ValueError: boom" in text
    for name in ("win_rate_vs_n.png", "reward_delta_vs_n.png"):
        assert (sweep / name).is_file() and f"({name})" in text


def test_markdown_table_keeps_each_row_on_one_line_with_its_cells() -> None:
    rows = [{"job": "0", "status": "ok", "value": 0.123456},
            {"job": "1", "status": "failed", "error": "ValueError: a|b\nsecond line"}]
    text = markdown_table(rows, ["job", "status", "value", "error"])
    lines = text.splitlines()
    assert len(lines) == 4 and set(lines[1]) <= {"|", "-", ":"}
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    assert cells[0] == ["job", "status", "value", "error"]
    assert cells[2] == ["0", "ok", "0.1235", ""]
    assert cells[3] == ["1", "failed", "", "ValueError: a\\|b second line"]


def test_report_subcommand_prints_the_sweep_report_and_has_help(tmp_path: Path, capsys) -> None:
    from sweetspot.cli import main

    make_job(tmp_path / "sweep" / "0", ["selection=max_min"], {"select/pairs": 3})
    make_job(tmp_path / "sweep" / "1", ["selection=sweet_spot"], None)
    main(["report", str(tmp_path / "sweep")])
    shown = capsys.readouterr().out
    assert re.search(r"^\| 0 +\| ok +\| max_min +\|", shown, re.M)
    assert re.search(r"^\| 1 +\| failed +\| sweet_spot +\|", shown, re.M)
    assert (tmp_path / "sweep" / "report.csv").is_file()
    with pytest.raises(SystemExit) as done:
        main(["report", "--help"])
    assert done.value.code == 0 and "run folder or a multirun folder" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["report", str(tmp_path / "missing")])
    assert done.value.code == 2 and "is not a folder" in capsys.readouterr().err

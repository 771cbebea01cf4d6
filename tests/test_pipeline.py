"""The whole pipeline on the tiny model: through the compose API, the CLI, and a multirun.

Config checks run in-process (the compose API, or ``sweetspot.cli.main`` where Hydra's own
argument handling is what is tested); two tests start the real command: a multirun, and an
invalid config's exit status."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoModelForCausalLM

from sweetspot.cli import main
from sweetspot.config import validate
from sweetspot.errors import ConfigError
from sweetspot.pipeline import run_pipeline

TINY = ("experiment=tiny", "logger=csv")


def test_end_to_end_compose_api(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(*TINY)
    metrics = run_pipeline(cfg, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("responses.parquet", "pairs.parquet", "pairs.jsonl", "metrics.json", "report.md",
                 "stages.json", "eval.parquet"):
        assert (run / name).is_file(), name
    responses = pd.read_parquet(run / "responses.parquet")
    assert len(responses) == 24 * 8  # every prompt's N responses, none dropped
    assert {"score/rules", "rules/detail", "reward", "reward_denoised", "logp"} <= set(responses)
    pairs = pd.read_parquet(run / "pairs.parquet")
    assert metrics["select/pairs"] == len(pairs) > 0
    skipped = sum(v for k, v in metrics.items() if k.startswith("select/skipped/"))
    assert len(pairs) + skipped == metrics["select/prompts"]  # each prompt paired or counted
    first = json.loads((run / "pairs.jsonl").read_text().splitlines()[0])
    assert first["chosen"][0]["role"] == "assistant" and first["prompt"][0]["role"] == "user"
    assert first["chosen_reward"] > first["rejected_reward"]
    assert {"chosen_position", "rejected_position", "margin", "weight", "route"} <= set(first)
    model = AutoModelForCausalLM.from_pretrained(run / "checkpoint")  # merged, plain transformers
    assert model.config.model_type == "llama"
    assert 0.0 <= metrics["eval/win_rate"] <= 1.0
    assert metrics["train/steps"] == 4


def test_rerun_reuses_every_stage(make_cfg, tmp_path: Path) -> None:
    run_pipeline(make_cfg(*TINY), tmp_path / "a")
    run_pipeline(make_cfg(*TINY), tmp_path / "b")
    stages = json.loads((tmp_path / "b" / "stages.json").read_text())
    assert all(s["reused"] for s in stages.values()), stages


def test_cli_multirun_samples_once(cache_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SWEETSPOT_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "sweetspot", "-m", *TINY, "selection=sweet_spot,max_min",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = [json.loads((tmp_path / "sweep" / str(i) / "stages.json").read_text()) for i in (0, 1)]
    for stage in ("prompts", "sample", "score", "denoise"):
        assert not jobs[0][stage]["reused"] and jobs[1][stage]["reused"], stage
        assert jobs[0][stage]["key"] == jobs[1][stage]["key"]
    assert jobs[0]["select"]["key"] != jobs[1]["select"]["key"]
    assert not jobs[1]["select"]["reused"]


def test_cli_positions_and_cfg_job(capsys) -> None:
    """The CLI's own argument handling (Hydra's ``--cfg job`` and ``--help``), in-process:
    neither runs the job, so nothing but the command line is exercised."""
    main(["--cfg", "job", *TINY, "selection=positions", "selection.chosen=max",
          "selection.rejected=mu-1sigma"])
    shown = capsys.readouterr().out
    assert "rejected: mu-1sigma" in shown and "sampler:" in shown
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    helped = capsys.readouterr().out
    for group in ("selection:", "sampler:", "loss:", "experiment:"):
        assert group in helped


INVALID = [
    ("sampler.n=1", "sampler.n"),
    ("loss.beta=0", "loss.beta"),
    ("selection.rejected=mu-twosigma", "selection.rejected"),
    ("trainer.lr=-1", "trainer.lr"),
]


@pytest.mark.parametrize(("override", "message"), INVALID)
def test_invalid_config_fails_before_loading(override: str, message: str, make_cfg,
                                             tmp_path: Path) -> None:
    cfg = make_cfg(*TINY, override)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_pipeline(cfg, tmp_path)
    assert not (tmp_path / "responses.parquet").exists()


def test_cli_exits_2_with_the_field_on_an_invalid_config(cache_dir: Path, tmp_path: Path) -> None:
    """The one true command line run of an invalid config: exit status 2, the field named."""
    override, message = INVALID[1]
    done = subprocess.run([sys.executable, "-m", "sweetspot", *TINY, override,
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert message in done.stderr + done.stdout
    assert message in (tmp_path / "error.txt").read_text()
    assert not (tmp_path / "responses.parquet").exists()


def test_unknown_option_is_rejected(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main([*TINY, "selection=nonsense"])
    assert done.value.code == 2  # a command-line mistake, like a refused value
    err = capsys.readouterr().err
    assert "nonsense" in err and "influence" in err  # Hydra lists the available options
    with pytest.raises(SystemExit) as done:
        main([*TINY, "sampler.n=="])  # a malformed override
    assert done.value.code == 2


def test_malformed_jsonl_names_file_and_line(make_cfg, tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Say hi."}\n{"prompt": "broken"\n')
    from sweetspot.errors import DataError

    with pytest.raises(DataError, match=r"prompts\.jsonl:2: malformed JSON"):
        run_pipeline(make_cfg(*TINY, "task=jsonl", f"task.path={path}"), tmp_path / "run")


def test_offline_completions_become_pairs_without_a_model(make_cfg, tmp_path: Path) -> None:
    rows = [{"prompt": "Name a color.", "responses": ["Blue.", "Red?", "Green", "Hm"],
             "scores": [0.9, 0.5, 0.7, 0.1]},
            {"prompt": "Say hi.", "responses": ["hi", "Hello!", "hey", "Yo"],
             "scores": [0.2, 0.8, 0.4, 0.6]}]
    path = tmp_path / "completions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg("sampler=offline", f"sampler.path={path}", "scorer=column",
                   "selection=max_min", "logger=none")
    assert cfg.until == "select"
    run_pipeline(cfg, tmp_path / "run")
    lines = (tmp_path / "run" / "pairs.jsonl").read_text().splitlines()
    pairs = [json.loads(line) for line in lines]
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("Blue.", "Hm"), ("Hello!", "hi")]
    assert [p["margin"] for p in pairs] == pytest.approx([0.8, 0.6])
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert "train" not in stages and "answers_trained" not in stages


def test_wandb_offline_run_holds_pairs_and_plots(make_cfg, tmp_path: Path) -> None:
    run_pipeline(make_cfg("experiment=tiny", "logger=wandb"), tmp_path / "run")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    table = json.loads(next(runs[0].glob("files/media/table/pairs_*.table.json")).read_text())
    assert {"chosen", "rejected", "chosen_reward", "rejected_reward"} <= set(table["columns"])
    assert len(table["data"]) == len(pd.read_parquet(tmp_path / "run" / "pairs.parquet"))
    assert list(runs[0].glob("files/media/images/reward_distribution_*.png"))

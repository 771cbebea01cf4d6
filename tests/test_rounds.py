"""Iterative rounds (``rounds=K``, ``sweetspot.rounds``) on the tiny model: each round's stages
are keyed by its input policy, a rerun reuses every round, a run stopped after round 1 resumes in
round 2, and ``round_reference`` decides what training's reference is."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from sweetspot.config import config_dir, validate
from sweetspot.errors import ConfigError
from sweetspot.rounds import run_rounds
from sweetspot.stage_keys import stage_keys

SMALL = (
    "experiment=tiny", "logger=csv", "task.max_train=6", "task.max_heldout=2", "sampler.n=4",
    "sampler.max_new_tokens=8", "trainer.max_steps=2", "evaluation.max_new_tokens=6",
    "evaluation.greedy=false",
)


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def reused(metrics: dict, prefix: str) -> dict[str, bool]:
    """Stage -> whether the run reused its cache entry, for one round's metric prefix."""
    head = f"{prefix}stage/"
    return {k[len(head):].split("/")[0]: v for k, v in metrics.items()
            if k.startswith(head) and k.endswith("/reused")}


@pytest.fixture(scope="module")
def rounds_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One fresh cache (``<root>/cache``): a rounds=1 run (what a run killed after round 1
    leaves), then rounds=2 twice."""
    root = tmp_path_factory.mktemp("rounds")
    runs = {}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SWEETSPOT_CACHE", str(root / "cache"))
        for name, rounds in (("one", 1), ("two", 2), ("again", 2)):
            runs[name] = root / name
            run_rounds(compose_cfg(*SMALL, f"rounds={rounds}"), runs[name])
    return runs


def test_round_one_is_the_plain_run_and_round_two_resumes_after_it(rounds_runs) -> None:
    """rounds=2 after a rounds=1 run (a run stopped after round 1): round 1 is found whole in
    the cache, round 2 samples, scores, selects and trains anew."""
    one = json.loads((rounds_runs["one"] / "stages.json").read_text())
    metrics = json.loads((rounds_runs["two"] / "metrics.json").read_text())
    stages = json.loads((rounds_runs["two"] / "stages.json").read_text())
    assert {s: stages[f"round1/{s}"]["key"] for s in one} == {s: e["key"] for s, e in one.items()}
    assert all(reused(metrics, "round1/").values())
    second = reused(metrics, "round2/")
    assert not any(second[s] for s in ("sample", "score", "select", "train", "answers_trained"))
    assert second["prompts"] and second["answers_reference"]  # pi_0's answers, computed once
    # round 1 of the CLI's config has the keys stage_keys gives a plain run of that config
    plain = stage_keys(compose_cfg(*SMALL))
    assert {s: stages[f"round1/{s}"]["key"] for s in one} == {s: plain[s] for s in one}


def test_round_two_is_keyed_by_the_policy_round_one_trained(rounds_runs) -> None:
    stages = json.loads((rounds_runs["two"] / "stages.json").read_text())
    sample = json.loads((Path(stages["round2/sample"]["path"]) / "meta.json").read_text())
    assert sample["config"]["model"] == {"source": "round", "train": stages["round1/train"]["key"]}
    train = json.loads((Path(stages["round2/train"]["path"]) / "meta.json").read_text())
    initial = validate(compose_cfg(*SMALL)).model.identity()
    assert train["config"]["reference"] == json.loads(json.dumps(initial))  # the default: pi_0
    assert stages["round2/answers_reference"]["key"] == stages["round1/answers_reference"]["key"]
    assert len({stages[f"round{r}/{s}"]["key"] for r in (1, 2)
                for s in ("sample", "score", "denoise", "select", "train")}) == 10


def test_rerun_reuses_every_round(rounds_runs) -> None:
    metrics = json.loads((rounds_runs["again"] / "metrics.json").read_text())
    flags = {**{f"1/{k}": v for k, v in reused(metrics, "round1/").items()},
             **{f"2/{k}": v for k, v in reused(metrics, "round2/").items()}}
    assert len(flags) == 16 and all(flags.values()), flags


def test_run_folder_has_every_round_and_the_final_one_under_plain_keys(rounds_runs) -> None:
    run = rounds_runs["two"]
    metrics = json.loads((run / "metrics.json").read_text())
    rounds = pd.read_csv(run / "rounds.csv")
    assert rounds["round"].tolist() == [1, 2]
    for r in (1, 2):
        own = json.loads((run / f"round{r}" / "metrics.json").read_text())
        assert metrics[f"round{r}/eval/reward_delta"] == own["eval/reward_delta"]
        row = rounds[rounds["round"] == r].iloc[0]
        assert math.isclose(row["reward_delta_low"], own["eval/reward_delta_ci95"][0])
        # the difference to pi_0, recomputed from the round's own answers table
        answers = pd.read_parquet(run / f"round{r}" / "eval.parquet")
        column = "score/rules"
        by_prompt = (answers[column] - answers[f"{column}_reference"]).groupby(
            answers["prompt_id"]).mean()
        assert math.isclose(row["reward_delta"], by_prompt.mean(), abs_tol=1e-12)
    final = json.loads((run / "round2" / "metrics.json").read_text())
    assert metrics["eval/reward_delta"] == final["eval/reward_delta"]
    assert metrics["rounds"] == 2
    report = (run / "report.md").read_text()
    assert "## Rounds" in report and "![held-out reward by round](rounds.png)" in report
    assert (run / "rounds.png").stat().st_size > 1000
    assert (run / "checkpoint").resolve() == (run / "round2" / "checkpoint").resolve()


def test_previous_reference_starts_round_two_at_zero_margin(rounds_runs, tmp_path,
                                                            monkeypatch) -> None:
    """With ``round_reference=previous`` round 2's reference is the policy it trains from, so
    the first batch's DPO loss is -log sigmoid(0) = log 2 exactly (LoRA starts at zero); with the
    default (initial) the reference is pi_0 and the first loss is not log 2."""
    monkeypatch.setenv("SWEETSPOT_CACHE", str(rounds_runs["one"].parent / "cache"))
    run_rounds(compose_cfg(*SMALL, "rounds=2", "round_reference=previous"), tmp_path / "p")
    previous = json.loads((tmp_path / "p" / "metrics.json").read_text())
    initial = json.loads((rounds_runs["two"] / "metrics.json").read_text())
    assert previous["round2/stage/sample/reused"]  # same input policy, same samples
    assert math.isclose(previous["round2/train/first_loss"], math.log(2), abs_tol=1e-5)
    assert abs(initial["round2/train/first_loss"] - math.log(2)) > 1e-4


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (("rounds=0",), "rounds"),
        (("rounds=2", "round_reference=pi0"), "round_reference"),
        (("rounds=2", "until=select"), "until"),
        (("rounds=2", "trainer.save=adapter"), "trainer.save"),
    ],
)
def test_bad_round_settings_fail_before_any_work(overrides, field, tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        run_rounds(compose_cfg(*SMALL, *overrides), tmp_path / "run")
    assert err.value.field == field
    assert not (tmp_path / "run").exists()


def test_iterative_preset_round_one_is_the_default_run() -> None:
    """experiment=iterative: 3 rounds whose first reuses the default run's cache entries (the
    same keys: 128 prompts x N = 8 x 96 tokens, seed 0), on every held-out prompt."""
    preset, default = compose_cfg("experiment=iterative"), compose_cfg()
    assert preset.rounds >= 3 and preset.round_reference == "initial"
    assert stage_keys(preset) == stage_keys(default)
    assert preset.task.max_heldout is None
    tiny = compose_cfg("experiment=iterative_tiny")
    assert tiny.rounds == 2 and tiny.model.source == "tiny"

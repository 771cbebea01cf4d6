"""``selection=pilot`` on the tiny model: the pilot's prompt split, its pick, its cache entry, its
table in the run folder and report, and the full run selecting with the picked pair."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from sweetspot.config import config_dir, validate
from sweetspot.errors import ConfigError, SweetspotError
from sweetspot.pilot_stage import pick_best, pilot_prompts
from sweetspot.pipeline import run_pipeline
from sweetspot.stage_keys import stage_keys

SMALL = (
    "experiment=tiny", "logger=csv", "selection=pilot", "task.max_train=8", "task.max_heldout=2",
    "sampler.n=6", "sampler.max_new_tokens=8", "trainer.max_steps=2",
    "evaluation.max_new_tokens=6", "evaluation.greedy=false",
    "selection.pairs=[max/min,mu+sigma/mu]", "selection.steps=2", "selection.lr=0.05",
    "selection.prompt_fraction=1.0", "selection.validation_fraction=0.5",
)


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_pilot_prompts_are_a_seeded_disjoint_subset() -> None:
    ids = [f"p{i:02d}" for i in range(25)]
    train, held = pilot_prompts(ids, 0.2, 0.5, seed=3)
    # 20% of 25 is 5 prompts (ceil); half of 5 rounds to 2 kept back
    assert (len(train), len(held)) == (3, 2)
    assert not set(train) & set(held) and set(train) | set(held) <= set(ids)
    assert pilot_prompts(list(reversed(ids)), 0.2, 0.5, seed=3) == (train, held)  # order-free
    assert pilot_prompts(ids, 0.2, 0.5, seed=4) != (train, held)
    # at least one prompt on each side, whatever the fractions
    assert [len(x) for x in pilot_prompts(ids[:3], 0.01, 0.99, seed=0)] == [1, 1]
    with pytest.raises(SweetspotError, match="at least 2"):
        pilot_prompts(["only"], 1.0, 0.5, seed=0)


def test_pick_best_by_mean_or_lower_bound() -> None:
    table = pd.DataFrame({
        "pair": ["a", "b", "c", "d"],
        "reward_delta": [0.10, 0.30, np.nan, 0.30],
        "reward_delta_low": [0.05, -0.20, np.nan, -0.10],
    })
    assert pick_best(table, "mean") == "b"  # ties go to the earlier candidate
    assert pick_best(table, "lower") == "a"
    with pytest.raises(SweetspotError, match="no pilot candidate"):
        pick_best(table.assign(reward_delta=np.nan), "mean")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("selection.pairs=[max/min,mu/max]", "selection.pairs[1]"),
        ("selection.pairs=[max/min,max/min]", "selection.pairs"),
        ("selection.validation_fraction=1.0", "selection.validation_fraction"),
        ("selection.prompt_fraction=0", "selection.prompt_fraction"),
        ("selection.pick=median", "selection.pick"),
        ("selection.steps=0", "selection.steps"),
    ],
)
def test_bad_pilot_settings_name_their_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("selection=pilot", override))
    assert err.value.field == field


def test_pilot_is_a_stage_between_denoise_and_select() -> None:
    pilot, plain = stage_keys(compose_cfg(*SMALL)), stage_keys(compose_cfg(*SMALL[:2],
                                                                            *SMALL[3:10]))
    assert "pilot" in pilot and "pilot" not in plain
    assert all(pilot[s] == plain[s] for s in ("prompts", "sample", "score", "denoise"))
    longer = stage_keys(compose_cfg(*SMALL, "selection.steps=3"))
    changed = {s for s in pilot if pilot[s] != longer[s]}
    assert changed == {"pilot", "select", "train", "answers_trained"}
    # the default run's keys have no pilot and are unchanged by the pilot's existence
    assert "pilot" not in stage_keys(compose_cfg())


@pytest.fixture(scope="module")
def pilot_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny selection=pilot run to the pairs, then the same run again, in a fresh cache
    (``<root>/cache``)."""
    root = tmp_path_factory.mktemp("pilot")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SWEETSPOT_CACHE", str(root / "cache"))
        run_pipeline(compose_cfg(*SMALL, "until=select"), root / "run")
        run_pipeline(compose_cfg(*SMALL, "until=select"), root / "again")
    return root / "run", root / "again"


def test_pilot_table_pick_and_full_run(pilot_run) -> None:
    run, _ = pilot_run
    table = pd.read_csv(run / "pilot.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    assert table["pair"].tolist() == ["max/min", "mu+sigma/mu"]
    assert table["picked"].sum() == 1
    pick = table.loc[table["picked"], "pair"].item()
    assert metrics["pilot/pick"] == pick
    best = table["reward_delta"].max()  # the pick has the largest mean difference, first on ties
    assert pick == table[table["reward_delta"] == best]["pair"].iloc[0]
    assert (metrics["pilot/train_prompts"], metrics["pilot/validation_prompts"]) == (4, 4)
    # the full run selected with the picked pair
    pairs = pd.read_parquet(run / "pairs.parquet")
    chosen, rejected = pick.split("/")
    assert set(pairs["chosen_position"]) == {chosen} and set(pairs["rejected_position"]) == {
        rejected}
    report = (run / "report.md").read_text()
    assert "## Pilot" in report and f"**{pick}** (picked)" in report


def test_pilot_figures_recomputed_from_its_answers(pilot_run) -> None:
    """Each candidate's reward difference and CI bounds against the untrained policy, from the
    scored answers the entry keeps: per-prompt mean differences, then a seeded bootstrap written
    here with a plain loop."""
    run, _ = pilot_run
    stages = json.loads((run / "stages.json").read_text())
    answers = pd.read_parquet(Path(stages["pilot"]["path"]) / "answers.parquet")
    table = pd.read_csv(run / "pilot.csv").set_index("pair")
    column = "score/rules"
    base = answers[answers["policy"] == "untrained"].set_index(["prompt_id", "sample_id"])[column]
    assert len(base) == 4
    for pair in table.index:
        mine = answers[answers["policy"] == pair].set_index(["prompt_id", "sample_id"])[column]
        diff = (mine - base.reindex(mine.index)).groupby(level=0).mean().to_numpy()
        assert math.isclose(table.loc[pair, "reward_delta"], diff.mean(), abs_tol=1e-12)
        rng = np.random.default_rng(0)
        draws = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(10_000)]
        low, high = np.percentile(draws, [2.5, 97.5])
        assert math.isclose(table.loc[pair, "reward_delta_low"], low, abs_tol=1e-9)
        assert math.isclose(table.loc[pair, "reward_delta_high"], high, abs_tol=1e-9)
        assert table.loc[pair, "steps"] == 2


def test_pilot_entry_is_keyed_and_reused(pilot_run) -> None:
    run, again = pilot_run
    stages = json.loads((run / "stages.json").read_text())
    assert stages["pilot"]["key"] == stage_keys(compose_cfg(*SMALL))["pilot"]
    second = json.loads((again / "metrics.json").read_text())
    assert second["stage/pilot/reused"] and second["stage/select/reused"]
    assert pd.read_csv(again / "pilot.csv").equals(pd.read_csv(run / "pilot.csv"))


def test_killed_pilot_resumes_at_the_next_candidate(pilot_run, monkeypatch, tmp_path) -> None:
    """A pilot that dies while training its second candidate keeps the first one's answers:
    the rerun trains only the second, and its table has both candidates."""
    import sweetspot.pilot_stage as stage

    run, _ = pilot_run
    monkeypatch.setenv("SWEETSPOT_CACHE", str(run.parent / "cache"))
    cfg = (*SMALL, "until=select", "selection.seed=1")  # another draw: a new pilot entry
    real, trained = stage.train_short, []

    def dies_on_the_second(*args, **kwargs):
        trained.append(args[2]["rejected_position"].iloc[0])
        if len(trained) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "train_short", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(compose_cfg(*cfg), tmp_path / "killed")
    trained.clear()

    def counted(*args, **kwargs):
        trained.append(args[2]["rejected_position"].iloc[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "train_short", counted)
    run_pipeline(compose_cfg(*cfg), tmp_path / "resumed")
    assert trained == ["mu"]  # max/min's answers were kept; only mu+sigma/mu trained again
    table = pd.read_csv(tmp_path / "resumed" / "pilot.csv")
    assert table["pair"].tolist() == ["max/min", "mu+sigma/mu"] and table["steps"].eq(2).all()

"""The stage contracts of ``sweetspot/README.md``: the pipeline talks to stage objects only
through their base classes' methods, and those methods do what the page says."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir

import sweetspot.pipeline
import sweetspot.stage_keys
from sweetspot.config import config_dir, validate
from sweetspot.sampling.offline import OfflinePrompts
from sweetspot.scoring.base import Scorer
from sweetspot.scoring.column import ColumnScorer
from sweetspot.selection.augment import AugmentOptions
from sweetspot.selection.base import SelectionResult, SelectionStrategy
from sweetspot.selection.margin import Margin
from sweetspot.selection.positions import Positions
from sweetspot.stage_keys import prompt_source


def calls_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.func.id for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def test_pipeline_never_asks_an_object_what_it_is() -> None:
    found = calls_in(Path(sweetspot.pipeline.__file__)) & {"hasattr", "getattr"}
    assert not found, f"pipeline.py duck-types stage objects with {sorted(found)}"
    keys = Path(sweetspot.stage_keys.__file__).read_text()
    assert "hasattr(plan" not in keys and "getattr(plan" not in keys


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@dataclass(kw_only=True)
class FirstTwo(SelectionStrategy):
    """A new strategy written against the base class alone: sample 0 over sample 1."""

    def select(self, responses: pd.DataFrame) -> SelectionResult:
        return SelectionResult(pairs=pd.DataFrame({"prompt_id": ["p"]}))


def test_a_new_strategy_needs_only_select() -> None:
    plain = FirstTwo()
    assert (plain.needs_implicit, plain.keep_order, plain.eval_system_prompt()) == (
        False, False, None)
    assert Positions().eval_system_prompt() is None


def test_augment_declares_the_evaluation_condition() -> None:
    options = AugmentOptions(scale_min=1, scale_max=10, decimals=0)
    strategy = Positions(augment=options)
    # the condition is the augment template filled with the top of the scale
    assert strategy.eval_system_prompt() == options.system_prompt(10)
    assert "10" in strategy.eval_system_prompt()


def test_implicit_settings_name_the_candidate_strategy() -> None:
    margin = Margin(chosen="max", rejected="mu-1sigma", implicit_subset_size=7,
                    implicit_steps=3, implicit_lr=1e-3, implicit_beta=0.2)
    settings = margin.implicit_settings()
    assert margin.needs_implicit
    assert isinstance(settings.candidates, Positions)
    assert (settings.candidates.chosen, settings.candidates.rejected) == ("max", "mu-1sigma")
    assert (settings.subset_size, settings.steps, settings.lr, settings.beta) == (7, 3, 1e-3, 0.2)
    assert settings.key["candidates"] == {"source": "positions", "chosen": "max",
                                          "rejected": "mu-1sigma"}
    data = Margin(candidates="data").implicit_settings().candidates
    # every data pair, unfiltered: one source, no cut
    assert isinstance(data, Margin) and data.sources == ["external"]
    assert data.top_fraction is None and data.augment is None


def test_scorer_run_returns_scores_with_their_statistics() -> None:
    table = pd.DataFrame({"prompt_id": ["a", "a", "b", "b"], "response": ["x", "", "y", "z"],
                          "score": [1.0, None, math.inf, 2.0]})
    result = ColumnScorer(source="score", scale=2.0).run(table)
    assert list(result.scores.index) == list(table.index)
    np.testing.assert_array_equal(result.scores["score/column"].to_numpy(),
                                  [2.0, np.nan, np.nan, 4.0])
    # counted by hand: one empty text, one missing score, one infinite, two unscored
    assert result.stats == {"responses": 4, "empty_responses": 1, "missing_scores": 1,
                            "infinite_scores": 1, "unscored": 2}
    assert isinstance(ColumnScorer(), Scorer)


def test_sampler_defaults_and_use_n(tmp_path: Path) -> None:
    plan = validate(compose_cfg("sampler.n=4", "sampler.use_n=2"))
    assert plan.sampler.prompt_source() is None and prompt_source(plan) is plan.task
    assert plan.sampler.comparisons(["a"]) is None
    table = pd.DataFrame({"prompt_id": ["a"] * 4, "sample_id": [0, 1, 2, 3]})
    assert list(plan.sampler.used(table)["sample_id"]) == [0, 1]


def test_offline_data_is_the_prompt_source(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "q1", "prompt": "Say hi.", "responses": ["hi", "hello"], '
                    '"scores": [1, 2], "comparisons": [[1, 0, 0.9]]}\n')
    plan = validate(compose_cfg("sampler=offline", f"sampler.path={path}"))
    source = prompt_source(plan)
    assert isinstance(source, OfflinePrompts)
    prompts = source.load()
    assert list(prompts["prompt_id"]) == ["q1"] and list(prompts["split"]) == ["train"]
    comparisons = plan.sampler.comparisons(["q1"])
    assert comparisons[["i", "j", "p"]].to_numpy().tolist() == [[1, 0, 0.9]]
    full = plan.sampler.used(plan.sampler.sample(prompts))
    assert list(full["sample_id"]) == [0, 1]  # use_n null: every response kept

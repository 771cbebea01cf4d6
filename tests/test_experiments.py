"""The ``experiment=`` study presets: each composes, its sweep is the study it names, every job of
its sweep is a valid config, and its ``<name>_tiny`` variant runs for real as a multirun."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from sweetspot.cli import main
from sweetspot.config import config_dir, validate

POSITIONS = ("min", "mu-2sigma", "mu-sigma", "mu", "mu+sigma", "mu+2sigma", "max")
ALL_PAIRS = {f"{hi}/{lo}" for lo, hi in itertools.combinations(POSITIONS, 2)}

# What each study sweeps (DESIGN.md, RESEARCH.md): key -> values, as Hydra parses them.
STUDIES: dict[str, dict[str, list[str]]] = {
    "sweet_spot_scaling": {
        "sampler.use_n": ["4", "8", "16", "32"],
        "selection": ["max_min", "sweet_spot"],
        "train_seed": ["0", "1", "2"],
    },
    "position_grid": {"selection.pair": sorted(ALL_PAIRS)},
    "less_is_more": {"selection.top_fraction": ["0.1", "1.0"]},
    "reward_augmented": {"selection": ["augment", "sweet_spot"]},
    "rating_dpo": {"loss": ["rdpo", "dpo"]},
    "curatron": {
        "denoiser.corrupt": ["0.0", "0.05", "0.1", "0.2"],
        "denoiser.solver": ["alm", "none"],
    },
    "small_margin": {"selection": ["mixdpo", "routing", "max_min"], "loss": ["hybrid", "dpo"]},
}
MAX_TINY_JOBS = 4


def compose_preset(name: str | None, *overrides: str, hydra: bool = False) -> DictConfig:
    """The config ``sweetspot experiment=<name> <overrides>`` runs (no preset when None)."""
    preset = [f"experiment={name}"] if name else []
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[*preset, *overrides], return_hydra_config=hydra)


def sweep_of(name: str) -> dict[str, list[str]]:
    """The preset's ``hydra.sweeper.params``, each parsed like the basic sweeper does."""
    params = compose_preset(name, hydra=True).hydra.sweeper.params
    parser = OverridesParser.create()
    out = {}
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        out[key] = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
    return out


def jobs_of(sweep: dict[str, list[str]]) -> list[list[str]]:
    return [
        [f"{k}={v}" for k, v in zip(sweep, values, strict=True)]
        for values in itertools.product(*sweep.values())
    ]


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_preset_sweeps_the_study(name: str) -> None:
    sweep = sweep_of(name)
    assert {k: sorted(v) for k, v in sweep.items()} == {
        k: sorted(v) for k, v in STUDIES[name].items()
    }
    for job in jobs_of(sweep):  # every job of the study is a valid config
        cfg = compose_preset(name, *job)
        validate(cfg)
        assert cfg.name == name


def test_study_specific_settings() -> None:
    scaling = compose_preset("sweet_spot_scaling")
    assert scaling.sampler.n == max(int(n) for n in STUDIES["sweet_spot_scaling"]["sampler.use_n"])
    grid = compose_preset("position_grid")
    assert grid.selection._target_.endswith("positions.Positions")
    assert len(ALL_PAIRS) == 21
    one = validate(compose_preset("position_grid", "selection.pair=mu+sigma/min")).selection
    assert (one.chosen, one.rejected) == ("mu+sigma", "min")  # pair names both positions
    margin = validate(compose_preset("less_is_more")).selection
    assert type(margin).__name__ == "Margin" and "implicit" in margin.sources
    assert validate(compose_preset("curatron")).denoiser.corrupt == 0.0  # the sweep sets it
    for name in STUDIES:  # the presets keep the default model and task (sizes may differ)
        cfg, default = compose_preset(name), compose_preset(None)
        assert cfg.model == default.model and cfg.task._target_ == default.task._target_
    # position_grid's N = 16 is the first 16 of sweet_spot_scaling's samples: same sample stage
    assert (grid.sampler.use_n, grid.task) == (16, scaling.task)
    assert {**grid.sampler, "use_n": None} == {**scaling.sampler, "use_n": None}


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_tiny_variant_is_a_small_version_of_the_study(name: str) -> None:
    tiny, full = sweep_of(f"{name}_tiny"), sweep_of(name)
    assert set(tiny) == set(full)
    assert all(set(tiny[k]) <= set(full[k]) for k in tiny)
    assert 2 <= len(jobs_of(tiny)) <= MAX_TINY_JOBS
    cfg = compose_preset(f"{name}_tiny")
    assert cfg.model.source == "tiny"
    for job in jobs_of(tiny):
        validate(compose_preset(f"{name}_tiny", *job))


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_tiny_variant_runs(
    name: str, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every study's tiny sweep, for real, through the CLI's entry point (in this process:
    ``tests/test_pipeline.py`` keeps a multirun in a subprocess); all of them share the
    session's stage cache (conftest's ``cache_dir``), so the tiny model and the shared stages
    are built once."""
    sweep_dir = tmp_path / "sweep"
    monkeypatch.setenv("SWEETSPOT_CACHE", str(cache_dir))
    main(["-m", f"experiment={name}_tiny", f"hydra.sweep.dir={sweep_dir}"])
    report = pd.read_csv(sweep_dir / "report.csv")
    expected = jobs_of(sweep_of(f"{name}_tiny"))
    assert len(report) == len(expected)
    assert (report["status"] == "ok").all(), report.get("error")
    markdown = (sweep_dir / "report.md").read_text()
    for job in report["job"]:
        assert re.search(rf"^\| {job} +\| ok +\|", markdown, re.M), job
    swept = [f"override/{k}" for k, v in sweep_of(f"{name}_tiny").items() if len(v) > 1]
    assert len(report[swept].drop_duplicates()) == len(report)  # each job a different arm
    assert (report["select/pairs"] > 0).all()

"""Shared fixtures: a stage cache per test session, and composing configs like the CLI does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from sweetspot.config import config_dir

torch.set_num_threads(2)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session: the tiny model is built once and stages are shared."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["SWEETSPOT_CACHE"] = str(path)
    return path


@pytest.fixture
def make_cfg(cache_dir: Path):
    def make(*overrides: str) -> DictConfig:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return make


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    """The ``/v1`` URL of a real llama.cpp OpenAI-compatible server (SmolLM2-135M), started once
    per session with weight repacking off (``tests/llama_server.py``)."""
    from tests.llama_server import serve

    yield from serve(tmp_path_factory.mktemp("llama_server") / "server.log")

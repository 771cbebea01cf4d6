"""The bad-input matrix: every case is a clear error naming where, or a counted skip.

docs/bad_input.md lists the same cases with their behaviour; keep the two in step.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweetspot.cli import main
from sweetspot.config import validate
from sweetspot.errors import ConfigError, DataError, SweetspotError
from sweetspot.models import ModelSpec, Policy, load_tokenizer, resolve_model_dir
from sweetspot.sampling.hf import HFSampler
from sweetspot.selection.positions import Positions
from sweetspot.tasks.jsonl import FileTask

# --- prompts files: each error names the file, the line and the field -----------------------

PROMPT_FILES = {
    "malformed_json": ('{"prompt": "a"}\n{"prompt": "b"\n', r"p\.jsonl:2: malformed JSON"),
    "not_an_object": ('{"prompt": "a"}\n["b"]\n', r"p\.jsonl:2: each line must be a JSON object"),
    "missing_field": ('{"prompt": "a"}\n{"text": "b"}\n', r"p\.jsonl:2: missing prompt.*'prompt'"),
    "wrong_type": ('{"prompt": 3}\n', r"p\.jsonl:1: .*'prompt'"),
    "bad_messages": ('{"prompt": [{"role": "user"}]}\n', r"p\.jsonl:1: .*'prompt'"),
    "empty_prompt": ('{"prompt": "   "}\n', r"p\.jsonl:1: empty prompt"),
    "empty_file": ("\n\n", r"p\.jsonl: no rows"),
    "bad_split": ('{"prompt": "a", "split": "dev"}\n', r"p\.jsonl:1: split must be.*'split'"),
}


@pytest.mark.parametrize("case", sorted(PROMPT_FILES))
def test_prompt_file_errors_name_file_line_field(case: str, tmp_path: Path) -> None:
    text, pattern = PROMPT_FILES[case]
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    split = "split" if case == "bad_split" else None
    with pytest.raises(DataError, match=pattern):
        FileTask(path=str(path), split_field=split).load()


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:2: not valid UTF-8"):
        FileTask(path=str(path)).load()


def test_duplicate_prompt_ids(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:2: duplicate prompt id '1'"):
        FileTask(path=str(path), id_field="id").load()


def test_missing_prompt_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        FileTask(path=str(tmp_path / "nope.jsonl")).fingerprint()


# --- configs: each error names the field, before any model is loaded --------------------------

CONFIG_CASES = [
    ("sampler.n=1", "sampler.n"),
    ("sampler.use_n=99", "sampler.use_n"),
    ("sampler.temperature=-1", "sampler.temperature"),
    ("loss.beta=0", "loss.beta"),
    ("loss.beta=-0.5", "loss.beta"),
    ("selection.rejected=mu-twosigma", "selection.rejected"),
    ("selection.chosen=median", "selection.chosen"),
    ("selection.chosen=min", "selection.rejected"),  # must rank below chosen
    ("selection.top_fraction=0", "selection.top_fraction"),
    ("selection.top_fraction=1.5", "selection.top_fraction"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.max_length=10", "trainer.max_length"),
    ("+sampler.nn=3", "sampler.nn"),
    ("model=hf", "model.name_or_path"),
]


@pytest.mark.parametrize(("override", "field"), CONFIG_CASES)
def test_config_errors_name_the_field(override: str, field: str, make_cfg) -> None:
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("experiment=tiny", "logger=csv", override))
    assert info.value.field.startswith(field), info.value


@pytest.mark.parametrize(("override", "field"), [
    ("sampler.n=eight", "sampler.n"),   # the schema types every field at composition
    ("trainer.lr=fast", "trainer.lr"),
    ("sampler.nn=3", "sampler.nn"),     # not a field of the sampler's class
])
def test_cli_reports_a_refused_override_as_a_config_error(
    override: str, field: str, cache_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Hydra refuses these while composing, before the job starts; the command line still
    names the field and exits 2, like a config error found by validation, and leaves Hydra's
    HYDRA_FULL_ERROR as it found it."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["sweetspot", "experiment=tiny", override,
                                      f"hydra.run.dir={run_dir}"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sweetspot: config error at '{field}'")
    assert err.count("\n") == 1  # one line, no traceback
    assert "HYDRA_FULL_ERROR" not in os.environ
    assert not run_dir.exists()  # nothing ran


def test_checkpoint_that_does_not_exist(cache_dir: Path) -> None:
    with pytest.raises(SweetspotError, match="does not exist"):
        resolve_model_dir(ModelSpec(source="hf", name_or_path="/no/such/checkpoint"), cache_dir)


def test_model_without_chat_template(cache_dir: Path, tmp_path: Path) -> None:
    path = Path(resolve_model_dir(ModelSpec(source="tiny"), cache_dir))
    copy = tmp_path / "no_template"
    shutil.copytree(path, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in copy.glob("chat_template.*"):
        extra.unlink()
    with pytest.raises(SweetspotError, match="no chat template"):
        load_tokenizer(str(copy), ModelSpec(source="hf", name_or_path=str(copy)))


# --- data that reaches a stage: counted skips, never silent drops -----------------------------

def test_prompts_beyond_the_context_are_skipped_and_counted(cache_dir: Path) -> None:
    spec = ModelSpec(source="tiny", max_context=64)
    policy = Policy(spec, resolve_model_dir(spec, cache_dir))
    prompts = pd.DataFrame({"prompt_id": ["short", "long"], "prompt": ["hi", "x" * 500]})
    out = HFSampler(n=2, max_new_tokens=8).sample(prompts, policy)
    assert len(out) == 4  # the long prompt keeps its rows, marked skipped
    skipped = out[out["prompt_id"] == "long"]
    assert skipped["skip_reason"].eq("prompt_too_long").all() and skipped["response"].isna().all()
    kept = HFSampler(n=2, max_new_tokens=8, overlong="truncate").sample(prompts, policy)
    assert kept["response"].notna().all()


def _responses(rewards: dict[str, list[float]], texts: dict[str, list[str]] | None = None):
    rows = []
    for pid, values in rewards.items():
        for i, r in enumerate(values):
            text = texts[pid][i] if texts and pid in texts else f"{pid}-{i}"
            rows.append({"prompt_id": pid, "sample_id": i, "response": text, "reward": r})
    return pd.DataFrame(rows)


def test_degenerate_prompts_are_counted_not_paired() -> None:
    table = _responses(
        {"ok": [0.1, 0.5, 0.9], "flat": [0.5, 0.5, 0.5], "one": [0.7],
         "dupes": [0.2, 0.8], "nan": [np.nan, np.nan, 0.3]},
        texts={"dupes": ["same", "same"]})
    result = Positions(chosen="max", rejected="min").select(table)
    assert result.pairs["prompt_id"].tolist() == ["ok"]
    assert sum(result.skipped.values()) == 4, result.skipped
    assert result.metrics["unscored_responses"] == 2


def test_infinite_reward_is_an_error() -> None:
    with pytest.raises(DataError, match="reward"):
        Positions().select(_responses({"a": [0.1, np.inf, 0.3]}))

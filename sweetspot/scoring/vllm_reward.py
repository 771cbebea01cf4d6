"""A sequence-classification reward model served by vLLM's pooling runner
(``scorer=reward_model_vllm``).

The same reward as ``scorer=reward_model`` (the head's logit at the last token of the
conversation in the reward model's chat template), computed by vLLM instead of a transformers
forward: vLLM batches by its own scheduler and is the engine to use for an 8B reward model over
millions of responses. This adapter is thin on purpose:

* the conversations are formatted and tokenised here, exactly as ``RewardModelScorer`` does
  (same template, same truncation to ``max_length`` tokens, counted), and sent to vLLM as token
  ids, so both backends score the same tokens;
* ``LLM(model=..., runner="pooling")`` loads the checkpoint as a pooling model (vLLM detects a
  ``*ForSequenceClassification`` architecture as ``classify``) and ``LLM.classify(...)`` with
  ``PoolingParams(use_activation=False)`` returns the head's raw logits (with the activation on,
  vLLM would return sigmoid/softmax probabilities, which are not the Bradley-Terry reward);
* ``build_requests`` and ``parse_outputs`` (requests in, one score per row out, each output
  checked to belong to its request) are plain functions, tested without a GPU.

API as of vLLM 0.11+ (``runner="pooling"`` replaced ``task="reward"/"classify"``; ``LLM.reward``
was removed in favour of ``classify`` for sequence-level rewards). In a job of several ranks, each
rank's engine starts on its own block of ``tensor_parallel_size`` GPUs
(``distributed.engine_gpus``). vLLM is imported only when the
scorer first scores, with a clear message when it is missing. It needs a CUDA GPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from sweetspot.distributed import engine_gpus
from sweetspot.errors import SweetspotError
from sweetspot.scoring.reward_model import (
    RewardModelScorer,
    hub_offline,
    is_empty,
    local_or_hub,
    require_columns,
)
from sweetspot.validation import at_least, require

log = logging.getLogger(__name__)

VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")


def build_requests(token_ids: Sequence[Sequence[int]], max_length: int
                   ) -> tuple[list[dict[str, list[int]]], int]:
    """One vLLM token prompt (``{"prompt_token_ids": ...}``) per row, each cut to its first
    ``max_length`` tokens; returns the requests and how many rows were cut."""
    requests = [{"prompt_token_ids": [int(t) for t in ids[:max_length]]} for ids in token_ids]
    return requests, sum(len(ids) > max_length for ids in token_ids)


def parse_outputs(requests: Sequence[dict[str, list[int]]], outputs: Sequence[Any],
                  label_index: int | None, where: str) -> tuple[np.ndarray, int]:
    """The reward of each request from ``LLM.classify``'s outputs (``.outputs.probs``: the head's
    values, raw logits with the activation off), in the requests' order.

    vLLM returns outputs in the order of its inputs; each output's ``prompt_token_ids`` (when it
    has them) is checked against its request, so a reordering would be an error, not wrong
    scores. ``label_index`` picks one of several outputs (None: the head must have one). A
    non-finite value becomes NaN; returns the scores and the count of those.
    """
    if len(outputs) != len(requests):
        raise SweetspotError(f"{where}: vLLM returned {len(outputs)} outputs for "
                             f"{len(requests)} requests")
    scores = np.full(len(requests), np.nan)
    for i, (request, output) in enumerate(zip(requests, outputs, strict=True)):
        ids = getattr(output, "prompt_token_ids", None)
        if ids is not None and list(ids) != request["prompt_token_ids"]:
            raise SweetspotError(f"{where}: vLLM output {i} belongs to another request (its "
                                 "prompt tokens differ); outputs out of order")
        values = [float(v) for v in output.outputs.probs]
        if label_index is None and len(values) != 1:
            raise SweetspotError(f"{where} has {len(values)} outputs; set scorer label_index to "
                                 "the one that is the reward")
        if label_index is not None and label_index >= len(values):
            raise SweetspotError(f"{where} has {len(values)} outputs; label_index "
                                 f"{label_index} is out of range")
        value = values[label_index or 0]
        scores[i] = value if math.isfinite(value) else np.nan
    return scores, int(np.isnan(scores).sum())


@dataclass(kw_only=True)
class VLLMRewardScorer(RewardModelScorer):
    """``RewardModelScorer``'s reward computed by vLLM's pooling runner (module docstring).

    Fields as ``scorer=reward_model`` (``name_or_path``, ``label_index``, ``max_length``,
    ``template_fallback``, ``trust_remote_code``, ``shard_prompts``), plus vLLM's engine
    settings: ``dtype`` (auto, float32, bfloat16, float16), ``tensor_parallel_size``,
    ``gpu_memory_utilization``, ``enforce_eager``. ``batch_size``, ``device`` and
    ``bucket_by_length`` are not used (vLLM schedules its own batches on the GPU).
    """

    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = RewardModelScorer.EXECUTION_ONLY + (
        "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager")
    DTYPE_CHOICES: ClassVar[tuple[str, ...]] = VLLM_DTYPES

    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("tensor_parallel_size", self.tensor_parallel_size, 1)
        require(0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization",
                f"must be in (0, 1], got {self.gpu_memory_utilization}")
        self._engine: Any = None

    def engine_args(self, path: str) -> dict[str, Any]:
        """The ``vllm.LLM`` keyword arguments (a pooling runner over the checkpoint)."""
        args: dict[str, Any] = {
            "model": path, "runner": "pooling", "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager, "seed": 0,
        }
        if self.trust_remote_code:
            args["trust_remote_code"] = True
        return args

    def load(self) -> tuple[Any, Any]:
        """The vLLM engine and the tokenizer (loaded once); the checkpoint is checked like
        ``RewardModelScorer``'s before vLLM starts."""
        if self._engine is not None:
            return self._engine, self._tokenizer
        try:
            from vllm import LLM
        except ImportError as err:
            raise SweetspotError("scorer=reward_model_vllm needs vLLM and a CUDA GPU: pip "
                                 "install 'sweetspot[vllm]' (or use scorer=reward_model, the "
                                 "transformers backend)") from err
        path = local_or_hub(self.name_or_path, "reward model name_or_path")
        local = Path(path).exists()
        if local and not (Path(path) / "config.json").is_file():
            raise SweetspotError(f"reward model {path}: not a transformers checkpoint (no "
                                 "config.json); expected a folder saved by save_pretrained")
        with hub_offline() if local else contextlib.nullcontext():
            self._check_config(path)
            self._tokenizer, self._template = self._load_tokenizer(path)
            with engine_gpus(self.tensor_parallel_size):  # this rank's GPUs, not GPU 0
                self._engine = LLM(**self.engine_args(path))
        return self._engine, self._tokenizer

    def score(self, responses: pd.DataFrame) -> pd.DataFrame:
        require_columns(responses, ("prompt_id", "prompt", "response"))
        engine, tok = self.load()
        ids = self.token_ids(responses, tok)
        requests, truncated = build_requests(ids, self.max_length)
        if requests:
            from vllm import PoolingParams

            outputs = engine.classify(requests, pooling_params=PoolingParams(
                use_activation=False), use_tqdm=False)
        else:
            outputs = []
        scores, nonfinite = parse_outputs(requests, outputs, self.label_index,
                                          f"reward model {self.name_or_path}")
        lengths = [len(r["prompt_token_ids"]) for r in requests]
        self.last_stats = {
            "responses": len(requests),
            "empty_responses": int(sum(is_empty(r) for r in responses["response"])),
            "truncated": int(truncated),
            "nonfinite_scores": nonfinite,
        }
        if truncated:
            log.warning("reward model %s: %d conversations longer than max_length=%d tokens were "
                        "truncated", self.name_or_path, truncated, self.max_length)
        return pd.DataFrame({self.column: scores, f"{self.name}/num_tokens": lengths},
                            index=responses.index)

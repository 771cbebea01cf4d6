"""The implicit DPO reward: r(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x)).

A policy trained with DPO defines a reward through its log-ratio to its reference (Rafailov et
al. 2023); margin-based selection (BeeS, Deng et al. 2025) uses that log-ratio, without beta, as
the implicit margin of a pair. Both models score every response with the project's one
log-probability implementation (:func:`sweetspot.training.logprobs.completion_logps`) on tokens
built exactly as training builds them (:func:`sweetspot.training.data.tokenize_pairs` and
:func:`~sweetspot.training.data.collate`): the prompt through the model's chat template with
the generation prompt, then the response tokens and EOS, all of which are scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from sweetspot.errors import SweetspotError
from sweetspot.models import ModelSpec, load_causal_lm, load_tokenizer
from sweetspot.scoring.base import Scorer
from sweetspot.scoring.reward_model import (
    SCORER_DTYPES,
    check_device,
    is_empty,
    local_or_hub,
    require_columns,
    resolve_device,
    warn_cpu_bf16,
)
from sweetspot.training.data import collate, plan_batches, tokenize_pairs
from sweetspot.training.logprobs import completion_logps
from sweetspot.validation import at_least, one_of, positive, require

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ImplicitScorer(Scorer):
    """beta * (log pi_policy(y|x) - log pi_reference(y|x)), summed over the response's tokens.

    The scorer is self-contained: both ``policy_path`` and ``reference_path`` are required (a
    checkpoint folder or a hub id each; a run's own model is not implied, so the same node scores
    the same way in any run). Both must load with ``AutoModelForCausalLM`` (safetensors) and have
    a chat template. Over-long prompts keep their last ``max_prompt_length`` tokens and
    responses their first ``max_length - prompt`` tokens, as in training; both are counted in
    ``last_stats``.

    Columns: ``score/<name>`` (beta times the log-ratio), ``<name>/logratio`` (the log-ratio
    itself: what margin selection reads as ``implicit_logratio``), ``<name>/policy_logp`` and
    ``<name>/reference_logp``. An empty response is still scored (its EOS token is) and counted
    in ``last_stats["empty_responses"]``.
    """

    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ("batch_size", "device")  # speed, not scores

    name: str = "implicit"
    policy_path: str
    reference_path: str
    beta: float = 0.1
    batch_size: int = 8
    max_length: int = 1024
    max_prompt_length: int = 512
    dtype: str = "float32"
    device: str = "auto"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "must be a non-empty string")
        require(bool(self.policy_path), "policy_path", "must name the policy checkpoint")
        require(bool(self.reference_path), "reference_path",
                "must name the reference checkpoint the policy was trained against")
        positive("beta", self.beta)
        at_least("batch_size", self.batch_size, 1)
        at_least("max_prompt_length", self.max_prompt_length, 1)
        require(self.max_length > self.max_prompt_length, "max_length",
                f"must exceed max_prompt_length ({self.max_prompt_length}), got {self.max_length}")
        one_of("dtype", self.dtype, SCORER_DTYPES)
        check_device("device", self.device)
        self.last_stats: dict = {}
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def load(self, field: str) -> tuple[Any, Any]:
        """(model, tokenizer) of ``policy_path`` or ``reference_path`` (loaded once)."""
        if field not in self._loaded:
            path = local_or_hub(getattr(self, field), f"scorer {field}")
            spec = ModelSpec(source="hf", name_or_path=path, dtype=self.dtype,
                             trust_remote_code=self.trust_remote_code)
            device = resolve_device(self.device)
            warn_cpu_bf16(self.dtype, device, f"implicit scorer {field}")
            try:
                tok = load_tokenizer(path, spec)
                model = load_causal_lm(path, spec, device)
            except SweetspotError:
                raise
            except (OSError, ValueError) as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise SweetspotError(f"scorer {field} {path}: cannot load it as a causal LM "
                                     f"({first})") from err
            if tok.eos_token_id is None:
                raise SweetspotError(f"scorer {field} {path}: the tokenizer has no EOS token")
            self._loaded[field] = (model, tok)
        return self._loaded[field]

    @torch.inference_mode()
    def logps(self, field: str, responses: pd.DataFrame) -> tuple[np.ndarray, dict[str, int]]:
        """Summed log-probs of each row's response + EOS under one model, and truncation counts."""
        model, tok = self.load(field)
        device = next(model.parameters()).device
        # One "pair" per row whose rejected side is empty: tokenize_pairs and collate build the
        # prompt + response rows exactly as training does, and only the first half is scored.
        frame = pd.DataFrame({
            "prompt": list(responses["prompt"]),
            "chosen": [r if isinstance(r, str) else "" for r in responses["response"]],
            "rejected": [""] * len(responses),
        })
        if "system_prompt" in responses:
            frame["system_prompt"] = list(responses["system_prompt"])
        pairs, stats = tokenize_pairs(frame, tok, self.max_length, self.max_prompt_length)
        out = np.zeros(len(pairs))
        for index in plan_batches(pairs, self.batch_size, keep_order=False):
            batch = collate([pairs[i] for i in index], tok.pad_token_id)
            half = len(index)
            values = completion_logps(
                model,
                batch["input_ids"][:half].to(device),
                batch["attention_mask"][:half].to(device),
                batch["completion_mask"][:half].to(device),
            )
            out[index] = values.double().cpu().numpy()
        return out, stats

    def score(self, responses: pd.DataFrame) -> pd.DataFrame:
        require_columns(responses, ("prompt_id", "prompt", "response"))
        policy, stats_p = self.logps("policy_path", responses)
        reference, stats_r = self.logps("reference_path", responses)
        logratio = policy - reference
        nonfinite = ~np.isfinite(logratio)
        logratio[nonfinite] = np.nan
        self.last_stats = {
            "responses": len(responses),
            "empty_responses": int(sum(is_empty(r) for r in responses["response"])),
            "prompts_truncated": max(stats_p["prompts_truncated"], stats_r["prompts_truncated"]),
            "completions_truncated": max(stats_p["completions_truncated"],
                                         stats_r["completions_truncated"]),
            "nonfinite_scores": int(nonfinite.sum()),
        }
        return pd.DataFrame({
            self.column: self.beta * logratio,
            f"{self.name}/logratio": logratio,
            f"{self.name}/policy_logp": policy,
            f"{self.name}/reference_logp": reference,
        }, index=responses.index)

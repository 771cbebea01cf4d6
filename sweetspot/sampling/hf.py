"""Sampling with transformers on CPU or one GPU: each prompt is prefilled once, its KV cache is
shared by its N samples, and each prompt draws from its own seeded generator.

HF ``generate(num_return_sequences=N)`` repeats every prompt N times before the prefill, so the
prompt is processed N times; here the prompts of a batch (sorted by length, left padded) are
prefilled together once and the cache is then repeated N times along the batch axis.

Seeding: prompt ``p`` samples from ``torch.Generator`` seeded with hash(seed, prompt_id), so a
prompt's samples do not depend on which other prompts share its batch. What torch does not
guarantee is bitwise-equal logits for different batch shapes (padding changes the matmul
shapes); a token whose sampled uniform falls within float error of a CDF boundary can then
differ. On CPU with float32 this is rare; it is the documented limit of the guarantee.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from sweetspot.data import as_messages
from sweetspot.models import context_length
from sweetspot.sampling.base import Sampler
from sweetspot.validation import at_least, non_negative, one_of, require


def prompt_seed(seed: int, prompt_id: str) -> int:
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(kw_only=True)
class GenerationSettings:
    """How responses are drawn; shared by the sample stage and evaluation (which may use n=1)."""

    n: int = 8
    seed: int = 0
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 8
    overlong: str = "skip"

    def check(self) -> None:
        at_least("n", self.n, 1)
        non_negative("temperature", self.temperature)
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        at_least("max_new_tokens", self.max_new_tokens, 1)
        at_least("batch_size", self.batch_size, 1)
        one_of("overlong", self.overlong, ("skip", "truncate"))

    def generate(self, prompts: pd.DataFrame, policy: Any) -> pd.DataFrame:
        tok, model = policy.tokenizer, policy.model
        limit = context_length(model, policy.spec) - self.max_new_tokens
        encoded, rows = [], []
        for rec in prompts.itertuples(index=False):
            text = tok.apply_chat_template(
                as_messages(rec.prompt), add_generation_prompt=True, tokenize=False
            )
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                if self.overlong == "skip":
                    rows.extend(_skipped_rows(rec.prompt_id, self.n, "prompt_too_long"))
                    continue
                ids = ids[-limit:]
            encoded.append((rec.prompt_id, ids))
        encoded.sort(key=lambda item: len(item[1]))
        advance = getattr(self, "progress", None)
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            rows.extend(self._generate(batch, tok, model))
            if advance is not None:
                advance(len(batch))
        return pd.DataFrame(rows)

    @torch.no_grad()
    def _generate(self, batch: list[tuple[str, list[int]]], tok: Any, model: Any) -> list[dict]:
        device = next(model.parameters()).device
        n, width = self.n, max(len(ids) for _, ids in batch)
        pad = tok.pad_token_id
        input_ids = torch.tensor(
            [[pad] * (width - len(ids)) + ids for _, ids in batch], device=device
        )
        mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for _, ids in batch], device=device
        )
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0)
        next_pos = position[:, -1:].repeat_interleave(n, dim=0) + 1
        generators = [
            torch.Generator(device=device).manual_seed(prompt_seed(self.seed, pid))
            for pid, _ in batch
        ]
        rows_total = len(batch) * n
        eos = _eos_ids(tok, model)
        tokens = torch.full((rows_total, self.max_new_tokens), pad, dtype=torch.long)
        logp = torch.zeros(rows_total, dtype=torch.float64)
        length = torch.zeros(rows_total, dtype=torch.long)
        done = torch.zeros(rows_total, dtype=torch.bool)
        stopped = torch.zeros(rows_total, dtype=torch.bool)
        for step in range(self.max_new_tokens):
            choice = self._draw(logits, generators)
            live = ~done
            tokens[live, step] = choice[live].cpu()
            # log p(token) without materialising a [rows, vocab] log-softmax
            token_logp = logits.gather(1, choice[:, None])[:, 0] - torch.logsumexp(logits, -1)
            logp[live] += token_logp[live].double().cpu()
            length[live] += 1
            hit_eos = torch.isin(choice, eos).cpu() & live
            stopped |= hit_eos
            done |= hit_eos
            if bool(done.all()) or step == self.max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(
                input_ids=choice[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                past_key_values=cache,
                use_cache=True,
            )
            cache, next_pos = out.past_key_values, next_pos + 1
            logits = out.logits[:, -1].float()
        rows = []
        for row in range(rows_total):
            pid = batch[row // n][0]
            body = tokens[row, : length[row]].tolist()
            if stopped[row]:
                body = body[:-1]
            rows.append(
                {
                    "prompt_id": pid,
                    "sample_id": row % n,
                    "response": tok.decode(body, skip_special_tokens=True),
                    "num_tokens": int(length[row]),
                    "finish_reason": "stop" if stopped[row] else "length",
                    "logp": float(logp[row]),
                    "skip_reason": None,
                }
            )
        return rows

    def _draw(self, logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        if self.temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1:
            probs = _top_p(probs, self.top_p)
        n = self.n
        return torch.cat(
            [
                torch.multinomial(probs[i * n : (i + 1) * n], 1, generator=g)[:, 0]
                for i, g in enumerate(generators)
            ]
        )


@dataclass(kw_only=True)
class HFSampler(GenerationSettings, Sampler):
    def __post_init__(self) -> None:
        Sampler.__post_init__(self)
        self.check()

    def sample(self, prompts: pd.DataFrame, policy: Any) -> pd.DataFrame:
        return self.generate(prompts, policy)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose mass reaches ``top_p`` (nucleus sampling)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


def _eos_ids(tok: Any, model: Any) -> torch.Tensor:
    ids = {tok.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is not None:
        ids |= set(configured if isinstance(configured, list) else [configured])
    device = next(model.parameters()).device
    return torch.tensor(sorted(i for i in ids if i is not None), device=device)


def _skipped_rows(prompt_id: str, n: int, reason: str) -> list[dict]:
    return [
        {
            "prompt_id": prompt_id,
            "sample_id": i,
            "response": None,
            "num_tokens": 0,
            "finish_reason": "skipped",
            "logp": float("nan"),
            "skip_reason": reason,
        }
        for i in range(n)
    ]

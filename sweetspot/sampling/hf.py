"""Sampling with transformers on CPU or one GPU: each prompt is prefilled once, its KV cache is
shared by its N samples, and each prompt draws from its own seeded generator.

HF ``generate(num_return_sequences=N)`` repeats every prompt N times before the prefill, so the
prompt is processed N times; here the prompts of a batch (sorted by length, left padded) are
prefilled together once and the cache is then repeated N times along the batch axis.

Seeding: prompt ``p`` has its own ``torch.Generator`` seeded with hash(seed, prompt_id). While any
of its samples is unfinished, each step draws N uniforms from it (one per sample, finished ones
included) and each live row picks its token by inverting its CDF at its uniform (``draw``). So
sample k's t-th token depends only on (seed, prompt_id, k) and the model: not on the batch size,
the other prompts in the batch, or which rows have finished. Finished rows leave the batch (their
KV cache rows are dropped), which saves their forward passes without touching anyone's stream.
What torch does not guarantee is bitwise-equal logits for different batch shapes (padding and
the number of live rows change the matmul shapes); a token whose uniform falls within float
error of a CDF boundary can then differ. On CPU with float32 this is rare; it is the documented
limit of the guarantee.

The random stream changed when ``torch.multinomial`` gave way to ``draw`` (one uniform per row
instead of one exponential per vocabulary entry): samples differ from earlier versions, and are
fixed from then on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from sweetspot.data import as_messages
from sweetspot.models import CACHE_ARG, context_length, kv_cache
from sweetspot.sampling.base import Sampler
from sweetspot.validation import at_least, non_negative, one_of, require


def prompt_seed(seed: int, prompt_id: str) -> int:
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class _Decoded:
    """What decoding drew for every row of a batch (row = prompt * N + k), on the CPU."""

    tokens: torch.Tensor  # long [rows, max_new_tokens], pad after a row's last token
    logp: torch.Tensor  # float64 [rows], the drawn tokens' summed log-probabilities
    length: torch.Tensor  # long [rows], tokens drawn, EOS included
    stopped: torch.Tensor  # bool [rows], the row drew EOS

    @classmethod
    def empty(cls, rows: int, max_new_tokens: int, pad: int) -> _Decoded:
        return cls(
            tokens=torch.full((rows, max_new_tokens), pad, dtype=torch.long),
            logp=torch.zeros(rows, dtype=torch.float64),
            length=torch.zeros(rows, dtype=torch.long),
            stopped=torch.zeros(rows, dtype=torch.bool),
        )

    def record(
        self,
        live: torch.Tensor,
        step: int,
        choice: torch.Tensor,
        token_logp: torch.Tensor,
        eos: torch.Tensor,
    ) -> torch.Tensor:
        """Store step ``step``'s tokens of the ``live`` rows; returns which of them drew EOS."""
        self.tokens[live, step] = choice.cpu()
        self.logp[live] += token_logp.double().cpu()
        self.length[live] += 1
        hit_eos = torch.isin(choice, eos).cpu()
        self.stopped[live[hit_eos]] = True
        return hit_eos


@dataclass(kw_only=True)
class GenerationSettings:
    """How responses are drawn; shared by the sample stage and evaluation (which may use n=1)."""

    n: int = 8
    seed: int = 0
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 96  # room for the word/sentence targets (64 cut 63% of answers short)
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

    @torch.inference_mode()
    def _generate(self, batch: list[tuple[str, list[int]]], tok: Any, model: Any) -> list[dict]:
        """N responses for each prompt of ``batch``: one shared prefill, then token by token."""
        device = next(model.parameters()).device
        cache, logits, mask, next_pos = self._prefill(batch, tok.pad_token_id, model, device)
        decoded = self._decode(batch, model, (cache, logits, mask, next_pos),
                               _eos_ids(tok, model), tok.pad_token_id, device)
        return self._rows(batch, tok, decoded)

    def _prefill(
        self, batch: list[tuple[str, list[int]]], pad: int, model: Any, device: torch.device
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward over the left-padded prompts; returns its KV cache, last logits,
        attention mask and next position ids, each repeated N times (row = prompt * N + k)."""
        n = self.n
        input_ids, mask, position = left_padded([ids for _, ids in batch], pad, device)
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = kv_cache(out)
        cache.batch_repeat_interleave(n)
        logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0)
        next_pos = position[:, -1:].repeat_interleave(n, dim=0) + 1
        return cache, logits, mask, next_pos

    def _decode(
        self,
        batch: list[tuple[str, list[int]]],
        model: Any,
        state: tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor],
        eos: torch.Tensor,
        pad: int,
        device: torch.device,
    ) -> _Decoded:
        """Draw up to ``max_new_tokens`` tokens per row from the prefill's ``state``; a row that
        draws EOS leaves the batch (its KV cache row is dropped)."""
        cache, logits, mask, next_pos = state
        generators = [
            torch.Generator(device=device).manual_seed(prompt_seed(self.seed, pid))
            for pid, _ in batch
        ]
        rows_total = len(batch) * self.n
        done = _Decoded.empty(rows_total, self.max_new_tokens, pad)
        live = torch.arange(rows_total)  # the global row of each row still in the batch
        for step in range(self.max_new_tokens):
            uniforms = self._uniforms(live, generators, device)
            choice, token_logp = draw(logits, uniforms, self.temperature, self.top_p)
            hit_eos = done.record(live, step, choice, token_logp, eos)
            if step == self.max_new_tokens - 1:
                break
            if bool(hit_eos.any()):
                # finished rows leave the batch; the others keep their own uniforms (above)
                keep = ~hit_eos
                if not bool(keep.any()):
                    break
                live = live[keep]
                index = keep.nonzero()[:, 0].to(device)
                cache.batch_select_indices(index)
                mask, next_pos, choice = mask[index], next_pos[index], choice[index]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(
                input_ids=choice[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                use_cache=True,
                **{CACHE_ARG: cache},
            )
            cache, next_pos = kv_cache(out), next_pos + 1
            logits = out.logits[:, -1].float()
        return done

    def _rows(self, batch: list[tuple[str, list[int]]], tok: Any, done: _Decoded) -> list[dict]:
        """The response rows (row = prompt * N + k), EOS cut from the text but counted."""
        rows = []
        for row in range(len(batch) * self.n):
            body = done.tokens[row, : done.length[row]].tolist()
            if done.stopped[row]:
                body = body[:-1]
            rows.append(
                {
                    "prompt_id": batch[row // self.n][0],
                    "sample_id": row % self.n,
                    "response": tok.decode(body, skip_special_tokens=True),
                    "num_tokens": int(done.length[row]),
                    "finish_reason": "stop" if done.stopped[row] else "length",
                    "logp": float(done.logp[row]),
                    "skip_reason": None,
                }
            )
        return rows

    def _uniforms(
        self, live: torch.Tensor, generators: list[torch.Generator], device: torch.device
    ) -> torch.Tensor | None:
        """One uniform per live row. Every prompt with a live row draws all N of its uniforms
        each step, finished samples included, so sample k's t-th uniform is the k-th of the
        prompt's t-th draw whatever else finished or shares the batch."""
        if self.temperature == 0:
            return None
        n = self.n
        prompts = torch.unique(live // n).tolist()
        drawn = torch.stack(
            [torch.rand(n, generator=generators[p], device=device) for p in prompts]
        )
        where = {p: i for i, p in enumerate(prompts)}
        slot = torch.tensor([where[p] for p in (live // n).tolist()], device=device)
        return drawn[slot, live.to(device) % n]


@dataclass(kw_only=True)
class HFSampler(GenerationSettings, Sampler):
    def __post_init__(self) -> None:
        Sampler.__post_init__(self)
        self.check()

    def sample(self, prompts: pd.DataFrame, policy: Any) -> pd.DataFrame:
        return self.generate(prompts, policy)


def left_padded(
    sequences: list[list[int]], pad: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids padded on the left, their attention mask and position ids: every row's last
    position is its last token, so one forward gives each row's next-token logits at -1."""
    width = max(len(seq) for seq in sequences)
    ids = torch.tensor([[pad] * (width - len(seq)) + seq for seq in sequences], device=device)
    mask = torch.tensor(
        [[0] * (width - len(seq)) + [1] * len(seq) for seq in sequences], device=device
    )
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def draw(
    logits: torch.Tensor, uniforms: torch.Tensor | None, temperature: float, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row by inverting the row's CDF at its uniform; return the tokens and
    their log-probabilities under the untempered model distribution.

    Why not ``torch.multinomial``: on CPU it draws one exponential per vocabulary entry (49k per
    row, ~300 ms a step for 64 rows), while inverting the CDF needs one uniform per row, which
    also lets the caller decide whose generator each row's uniform comes from. The naive loop of
    ``benchmarks/bench_sampling.py`` calls this same function, so both sides draw alike.
    ``uniforms`` are in [0, 1), one per row; ``None`` when ``temperature`` is 0 (greedy).
    """
    top = logits.amax(-1, keepdim=True)
    shifted = logits - top
    if temperature == 0:
        choice = logits.argmax(-1)
        norm = torch.exp(shifted).sum(-1)
    else:
        if uniforms is None:
            raise ValueError("draw: uniforms are needed when temperature > 0")
        weights = torch.exp(shifted if temperature == 1 else shifted / temperature)
        if top_p < 1:
            weights = _top_p(weights / weights.sum(-1, keepdim=True), top_p)
        cdf = weights.cumsum(-1)
        total = cdf[:, -1:]
        # strictly below the total, so the first entry above it has positive weight
        target = torch.minimum(
            uniforms[:, None].to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total))
        )
        choice = torch.searchsorted(cdf, target, right=True)[:, 0]
        norm = total[:, 0] if temperature == 1 and top_p == 1 else torch.exp(shifted).sum(-1)
    token_logp = shifted.gather(1, choice[:, None])[:, 0] - norm.log()
    return choice, token_logp


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

"""An LLM as judge (``scorer=judge``): the AI-feedback step of UltraFeedback and distilabel.

A rubric prompt (``templates`` in ``conf/scorer/judge.yaml``: one overall rubric, or one per
aspect as in UltraFeedback: helpfulness, honesty, instruction following, truthfulness) shows the
judge the instruction and the response and asks for a rating from ``low`` to ``high`` (1-10).
The judge is not asked to generate and then parsed: its next-token log-probabilities at the
rating position are read, and the score is the probability-weighted mean rating (G-Eval, Liu et
al. 2023), renormalised over the valid rating tokens, so it is continuous rather than an integer
and ties between responses are rare.

``10`` versus ``1``: a tokenizer that splits ``10`` into ``1`` + ``0`` (SmolLM2's does, like most
that split digits) gives the first token ``1`` to both ratings. It is handled explicitly
(``rating_distribution``): with the distribution of the token after ``1``, P(10) = P(1 first) *
P(``0`` next) and P(1) = P(1 first) * P(no digit next) (a digit other than 0 would be 11-19,
not a rating, and drops out in the renormalisation). The local backend always computes that
second distribution (one more forward pass with ``1`` appended). An OpenAI-compatible server
returns it only when its greedy answer starts with ``1`` (the second position's
``top_logprobs``); otherwise P(1 first) counts as rating 1, and the response is counted in
``judge_ten_unresolved`` so the approximation is never silent.

Backends:
  * ``hf``: a local causal LM (``name_or_path``: a folder saved by ``save_pretrained`` or a hub
    id), its chat template, the next-token distribution after the rendered prompt (full
    vocabulary, exact).
  * ``openai``: any OpenAI-compatible server (vLLM serve, SGLang, llama.cpp, a hosted API):
    ``POST {base_url}/chat/completions`` with ``logprobs: true, top_logprobs: k,
    max_tokens: 2, temperature: 0``; only the top ``k`` tokens are visible, so a rating outside
    them has probability 0. Requests go through the ``openai`` sampler's client
    (``sampling/openai_client.py``): the same retries, backoff cap, ``Retry-After`` and
    cancellation of the other requests when one fails.

Per response and aspect it keeps the rating distribution's mean (``<name>/<aspect>/mean``), its
entropy in nats (``/entropy``), the most probable rating (``/rating``: what the judge would
answer) and the probability mass the valid ratings had before renormalising (``/mass``); per
response the hash of its rendered judge prompts (``<name>/prompt_hash``). A rating that cannot be
read (no valid rating token visible, or its mass under ``min_mass``) leaves the score NaN: the row
is kept and counted (``unreadable``), never dropped.

A note on judgement: the small built-in model (SmolLM2-135M) is a weak judge. The tests use it
(and a random tiny model) to prove the mechanics (prompts, log-probs, the weighted mean, the
``10`` split, counting), not that its ratings mean anything. Use a strong judge for real data.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from sweetspot.errors import ConfigError, DataError, SweetspotError
from sweetspot.models import DTYPES
from sweetspot.sampling.hf import left_padded
from sweetspot.sampling.openai_client import ChatClient, Post, check_settings
from sweetspot.scoring.base import Scorer
from sweetspot.scoring.reward_model import (
    SCORER_DTYPES,
    check_device,
    hub_offline,
    is_empty,
    local_or_hub,
    require_columns,
    resolve_device,
)
from sweetspot.validation import at_least, one_of, require

log = logging.getLogger(__name__)

BACKENDS = ("hf", "openai")
DIGITS = tuple(str(d) for d in range(10))


def rating_distribution(first: Mapping[str, float], after_one: Mapping[str, float] | None,
                        low: int, high: int) -> tuple[np.ndarray, float, bool]:
    """P(rating) for ratings ``low..high`` from log-probabilities, renormalised.

    ``first``: token text -> log-prob at the rating position (any tokens; surrounding
    whitespace is ignored, so `` 7`` counts for 7, and several spellings add up). ``after_one``:
    token text -> log-prob of the next token after a ``1`` (None when unknown). Returns the
    renormalised probabilities, the mass the valid ratings had before renormalising (0: the
    rating cannot be read), and whether the 1-versus-10 split was needed but unknown.
    """
    ratings = [str(r) for r in range(low, high + 1)]
    mass = dict.fromkeys(ratings, 0.0)
    for token, logprob in first.items():
        text = token.strip()
        if text in mass:
            mass[text] += math.exp(logprob)
    unresolved = False
    two_digit = [r for r in ratings if len(r) == 2 and r[0] == "1"]  # 10 (and more if high > 10)
    if two_digit and "1" in mass and mass["1"] > 0:
        if after_one is not None:
            nxt: dict[str, float] = {}
            for token, logprob in after_one.items():
                nxt[token.strip()] = nxt.get(token.strip(), 0.0) + math.exp(logprob)
            p1 = mass["1"]
            for r in two_digit:
                mass[r] += p1 * nxt.get(r[1], 0.0)
            mass["1"] = p1 * max(0.0, 1.0 - sum(nxt.get(d, 0.0) for d in DIGITS))
        elif not any(t.strip() in two_digit for t in first):
            unresolved = True
    probs = np.array([mass[r] for r in ratings])
    total = float(probs.sum())
    return (probs / total if total > 0 else probs), total, unresolved


def summarise(probs: np.ndarray, low: int) -> tuple[float, float, float]:
    """Mean rating, entropy (nats) and the most probable rating of a renormalised
    distribution (NaN for an all-zero one)."""
    if not probs.sum() > 0:
        return math.nan, math.nan, math.nan
    ratings = np.arange(low, low + len(probs))
    nz = probs[probs > 0]
    return (float(ratings @ probs), float(-(nz * np.log(nz)).sum()),
            float(ratings[int(np.argmax(probs))]))


def instruction_text(prompt: object) -> str:
    """The instruction a judge sees: the prompt string, or its chat's user turns (the system
    prompt is the sampler's business, not part of the task)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list | tuple | np.ndarray):
        turns = [m.get("content", "") for m in prompt if isinstance(m, Mapping)
                 and m.get("role") == "user"]
        return "\n\n".join(str(t) for t in turns)
    return "" if prompt is None else str(prompt)


DEFAULT_TEMPLATES = {
    "overall": (
        "Rate how well the response answers the instruction, from {low} (useless) to {high} "
        "(perfect).\n\nInstruction:\n{instruction}\n\nResponse:\n{response}\n\nAnswer with the "
        "rating only, a whole number from {low} to {high}."),
}


@dataclass(kw_only=True)
class JudgeScorer(Scorer):
    """The judge's probability-weighted rating (module docstring).

    Fields:
      backend: ``hf`` (local causal LM) or ``openai`` (an OpenAI-compatible server).
      name_or_path: the local judge (``hf``): a checkpoint folder or hub id.
      base_url, model, api_key_env: the server (``openai``); the key is read from that
        environment variable when set (never stored in the config).
      aspects: which ``templates`` to ask; the score is the mean of the aspects' mean ratings
        (NaN when any aspect's rating cannot be read).
      templates: aspect -> rubric, a ``str.format`` template with ``{instruction}``,
        ``{response}``, ``{low}`` and ``{high}`` (literal braces doubled).
      system: an optional system message before each rubric.
      low, high: the rating scale.
      top_logprobs: how many alternatives the server returns per position (``openai``).
      min_mass: a rating whose valid tokens had less probability than this is unreadable.
      max_length: rendered prompts longer than this many tokens keep their last ones (``hf``;
        counted in ``truncated``).
      batch_size, dtype, device (``hf``), concurrency, timeout_s, max_retries, backoff_s,
      max_backoff_s (``openai``: as the ``openai`` sampler's), shard_prompts: how the work is
      done, not the scores.
    """

    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = (
        "batch_size", "device", "concurrency", "timeout_s", "max_retries", "backoff_s",
        "max_backoff_s", "shard_prompts")
    STAT_WEIGHTS: ClassVar[dict[str, str]] = {"mean_mass": "judgements"}

    name: str = "judge"
    backend: str = "hf"
    name_or_path: str | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    aspects: list[str] = field(default_factory=lambda: ["overall"])
    templates: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    system: str | None = None
    low: int = 1
    high: int = 10
    top_logprobs: int = 20
    min_mass: float = 0.0
    max_length: int = 2048
    batch_size: int = 4
    dtype: str = "float32"
    device: str = "auto"
    concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    shard_prompts: int = 16

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "must be a non-empty string")
        one_of("backend", self.backend, BACKENDS)
        if self.backend == "hf":
            require(bool(self.name_or_path), "name_or_path",
                    "must name the judge model (a folder or hub id) for backend=hf")
        else:
            require(bool(self.base_url), "base_url",
                    "must be the server's URL (e.g. http://127.0.0.1:8000/v1) for backend=openai")
            require(bool(self.model), "model", "must name the served model for backend=openai")
        at_least("low", self.low, 0)
        require(self.high > self.low, "high", f"must be above low={self.low}")
        require(self.high <= 19, "high", "ratings above 19 are not supported (two-digit "
                "ratings are read as 1 + a second digit)")
        require(len(self.aspects) > 0, "aspects", "must name at least one template")
        for i, aspect in enumerate(self.aspects):
            require(aspect in self.templates, f"aspects[{i}]",
                    f"{aspect!r} has no template (templates: {sorted(self.templates)})")
            self._check_template(aspect, self.templates[aspect])
        at_least("top_logprobs", self.top_logprobs, 1)
        require(0.0 <= self.min_mass < 1.0, "min_mass", f"must be in [0, 1), got {self.min_mass}")
        at_least("max_length", self.max_length, 8)
        at_least("batch_size", self.batch_size, 1)
        one_of("dtype", self.dtype, SCORER_DTYPES)
        check_device("device", self.device)
        check_settings(self.concurrency, self.max_retries, self.timeout_s, self.backoff_s,
                       self.max_backoff_s)
        at_least("shard_prompts", self.shard_prompts, 1)
        self.last_stats: dict = {}
        self._model: Any = None
        self._tokenizer: Any = None

    @staticmethod
    def _check_template(aspect: str, template: str) -> None:
        try:
            template.format(instruction="I", response="R", low=1, high=10)
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"templates.{aspect}", f"is not a valid template ({err!r}); use "
                              "{instruction}, {response}, {low}, {high} and double other "
                              "braces") from None
        require("{instruction}" in template and "{response}" in template, f"templates.{aspect}",
                "must contain {instruction} and {response}")

    def shard_size(self) -> int:
        return self.shard_prompts

    # -- prompts ---------------------------------------------------------------------------

    def messages(self, instruction: str, response: str, aspect: str) -> list[dict[str, str]]:
        """The chat the judge reads for one response and aspect."""
        text = self.templates[aspect].format(instruction=instruction, response=response,
                                             low=self.low, high=self.high)
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": text}]

    # -- scoring ---------------------------------------------------------------------------

    def score(self, responses: pd.DataFrame) -> pd.DataFrame:
        require_columns(responses, ("prompt_id", "prompt", "response"))
        check_rows(responses)
        n = len(responses)
        instructions = [instruction_text(p) for p in responses["prompt"]]
        texts = [r if isinstance(r, str) else "" for r in responses["response"]]
        chats = {a: [self.messages(i, t, a) for i, t in zip(instructions, texts, strict=True)]
                 for a in self.aspects}
        judged = {a: (self._judge_hf(chats[a]) if self.backend == "hf"
                      else self._judge_openai(chats[a])) for a in self.aspects}
        out: dict[str, Any] = {}
        means = np.full((len(self.aspects), n), np.nan)
        unresolved = truncated = 0
        masses = []
        for k, aspect in enumerate(self.aspects):
            stats = np.full((4, n), np.nan)
            for i, (first, after_one, cut) in enumerate(judged[aspect]):
                probs, mass, unknown = rating_distribution(first, after_one, self.low, self.high)
                unresolved += unknown
                truncated += cut
                masses.append(mass)
                if mass > 0 and mass >= self.min_mass:
                    stats[:3, i] = summarise(probs, self.low)
                stats[3, i] = mass
            means[k] = stats[0]
            for j, what in enumerate(("mean", "entropy", "rating", "mass")):
                out[f"{self.name}/{aspect}/{what}"] = stats[j]
        score = means.mean(axis=0) if n else np.zeros(0)
        hashes = [hashlib.sha256(repr([chats[a][i] for a in self.aspects]).encode())
                  .hexdigest()[:16] for i in range(n)]
        unreadable = int(np.isnan(score).sum())
        self.last_stats = {
            "responses": n,
            "empty_responses": int(sum(is_empty(r) for r in responses["response"])),
            "unreadable": unreadable,
            "judgements": len(masses),
            "mean_mass": float(np.mean(masses)) if masses else 0.0,
            "ten_unresolved": int(unresolved),
            "truncated": int(truncated),
        }
        if unreadable:
            log.warning("judge: the rating of %d of %d responses could not be read (scored NaN, "
                        "kept and counted)", unreadable, n)
        return pd.DataFrame({self.column: score, f"{self.name}/prompt_hash": hashes, **out},
                            index=responses.index)

    # -- the local backend ------------------------------------------------------------------

    def load(self) -> tuple[Any, Any]:
        """The judge model and tokenizer (loaded once; a local folder never reaches the hub)."""
        if self._model is not None:
            return self._model, self._tokenizer
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = local_or_hub(str(self.name_or_path), "judge name_or_path")
        local = Path(path).exists()
        with hub_offline() if local else contextlib.nullcontext():
            try:
                tok = AutoTokenizer.from_pretrained(path)
                model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[self.dtype])
            except (OSError, ValueError, KeyError) as err:
                raise SweetspotError(f"judge {path}: cannot load it as a causal LM "
                                     f"({str(err).strip().splitlines()[0]})") from err
        if not tok.chat_template:
            raise SweetspotError(f"judge {path}: its tokenizer has no chat template")
        device = resolve_device(self.device)
        self._model, self._tokenizer = model.to(device).eval(), tok
        self._device = device
        self._rating_ids = self._candidate_ids(tok)
        self._one_id, self._ten_splits = self._one_token(tok)
        return self._model, self._tokenizer

    def _candidate_ids(self, tok: Any) -> list[int]:
        """Token ids that can start a rating or continue one (each rating and digit, with and
        without a leading space)."""
        ids: set[int] = set()
        for text in [str(r) for r in range(self.low, self.high + 1)] + list(DIGITS):
            for spelled in (text, " " + text):
                encoded = tok.encode(spelled, add_special_tokens=False)
                if encoded:
                    ids.add(encoded[0])
        return sorted(ids)

    def _one_token(self, tok: Any) -> tuple[int | None, bool]:
        """The token of ``1`` and whether ``10`` (or any rating of the scale) is split into
        ``1`` and a second digit by this tokenizer."""
        one = tok.encode("1", add_special_tokens=False)
        splits = any(len(tok.encode(str(r), add_special_tokens=False)) > 1
                     for r in range(max(self.low, 10), self.high + 1))
        return (one[0] if len(one) == 1 else None), splits

    @torch.inference_mode()
    def _next_logprobs(self, sequences: list[list[int]]) -> torch.Tensor:
        """log P(next token) after each sequence, restricted to the candidate ids: [B, K]."""
        model, tok = self._model, self._tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids, mask, position = left_padded(sequences, pad, self._device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position).logits[:, -1]
        logits = logits.float()
        return torch.log_softmax(logits, dim=-1)[:, self._rating_ids].cpu()

    def _judge_hf(self, chats: list[list[dict[str, str]]]
                  ) -> list[tuple[dict[str, float], dict[str, float] | None, bool]]:
        _, tok = self.load()
        sequences, cuts = [], []
        for chat in chats:
            text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            seq = tok(text, add_special_tokens=False)["input_ids"]
            cuts.append(len(seq) > self.max_length)
            sequences.append(seq[-self.max_length:])
        names = [tok.decode([i]) for i in self._rating_ids]
        out = []
        for start in range(0, len(sequences), self.batch_size):
            batch = sequences[start:start + self.batch_size]
            first = self._next_logprobs(batch)
            second = (self._next_logprobs([s + [self._one_id] for s in batch])
                      if self._ten_splits and self._one_id is not None else None)
            for row in range(len(batch)):
                out.append((dict(zip(names, first[row].tolist(), strict=True)),
                            None if second is None
                            else dict(zip(names, second[row].tolist(), strict=True)),
                            cuts[start + row]))
        return out

    # -- the server backend -----------------------------------------------------------------

    def request_body(self, chat: list[dict[str, str]]) -> dict[str, Any]:
        """The chat completions request: the rating position's alternatives, and the next
        position's (for the 1-versus-10 split when the answer starts with 1)."""
        return {"model": self.model, "messages": chat, "max_tokens": 2, "temperature": 0.0,
                "logprobs": True, "top_logprobs": self.top_logprobs, "seed": 0}

    @staticmethod
    def parse_response(answer: Mapping[str, Any]) -> tuple[dict[str, float],
                                                           dict[str, float] | None]:
        """(alternatives at the first position, alternatives after a leading ``1`` or None)
        from a chat completions answer with ``logprobs``."""
        try:
            content = answer["choices"][0]["logprobs"]["content"] or []
        except (KeyError, IndexError, TypeError):
            raise SweetspotError("the judge server answered without logprobs; it must support "
                                 "'logprobs' and 'top_logprobs' on /chat/completions") from None

        def alternatives(position: Mapping[str, Any]) -> dict[str, float]:
            alts: dict[str, float] = {}
            for item in position.get("top_logprobs") or []:
                alts[item["token"]] = max(alts.get(item["token"], -math.inf), item["logprob"])
            alts.setdefault(position["token"], position["logprob"])
            return alts

        if not content:
            return {}, None
        first = alternatives(content[0])
        after_one = (alternatives(content[1])
                     if len(content) > 1 and content[0]["token"].strip() == "1" else None)
        return first, after_one

    def _judge_openai(self, chats: list[list[dict[str, str]]]
                      ) -> list[tuple[dict[str, float], dict[str, float] | None, bool]]:
        client = ChatClient(
            base_url=str(self.base_url), api_key_env=self.api_key_env, timeout_s=self.timeout_s,
            max_retries=self.max_retries, backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s, concurrency=self.concurrency,
            server="the judge server", url_field="scorer.base_url")

        def one(post: Post, chat: list[dict[str, str]]) -> tuple[dict, dict | None, bool]:
            return (*self.parse_response(post(self.request_body(chat))), False)

        return client.map(one, chats)


def check_rows(responses: pd.DataFrame) -> None:
    """A judge needs text: a row whose prompt is missing is a DataError naming it."""
    for pid, prompt in zip(responses["prompt_id"], responses["prompt"], strict=True):
        if prompt is None:
            raise DataError(f"prompt {pid!r} has no prompt text to show the judge",
                            field="prompt")

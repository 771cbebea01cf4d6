"""Sampling from any OpenAI-compatible server (``vllm serve``, SGLang, TGI, llama.cpp's server, a
hosted API) through its chat completions endpoint, over plain HTTP (``httpx``; the ``openai``
package is not needed).

Requests: one per prompt asking for ``n`` choices (``n_per_request: true``), or, for servers that
ignore ``n`` (llama.cpp's server, some hosted APIs), ``n`` requests of one choice each. Request
``i`` of a prompt carries ``seed = (prompt_seed(seed, prompt_id) + i) mod 2**31``, so a prompt's
seeds do not depend on the shard or on the order of the prompts; whether a server honours ``seed``
is up to the server.

HTTP is :class:`~sweetspot.sampling.openai_client.ChatClient`'s (shared with the judge's
``openai`` backend): at most ``concurrency`` requests in flight; 429, 5xx, timeouts and connection
errors retried ``max_retries`` times with exponential backoff (``backoff_s * 2**attempt``, capped
at ``max_backoff_s``; a ``Retry-After`` header wins when it is shorter than the cap); then a
:class:`SweetspotError` names the URL. Other 4xx answers are not retried: their message is shown
as the server sent it (``on_bad_request: skip`` turns a 400 into skipped rows,
``skip_reason = "bad_request"``, e.g. for a prompt longer than the server's context).

The API key: ``api_key_env`` is the NAME of an environment variable; its value is read when a
request is sent, put in the ``Authorization`` header, and never stored, logged or written.

Columns: ``num_tokens`` is the choice's length from its logprobs when they came back, else
``usage.completion_tokens`` when the request had one choice, else missing (``<NA>``, counted as
``num_tokens_unknown``); ``logp`` is the sum of the returned token logprobs (``logprobs: true``)
and NaN otherwise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sweetspot.data import as_messages
from sweetspot.errors import SweetspotError
from sweetspot.sampling.base import RESPONSE_COLUMNS, Sampler
from sweetspot.sampling.hf import prompt_seed
from sweetspot.sampling.openai_client import BadRequest, ChatClient, Post, check_settings
from sweetspot.validation import at_least, non_negative, one_of, require

log = logging.getLogger(__name__)

SEED_MODULUS = 2**31


@dataclass(kw_only=True)
class OpenAISampler(Sampler):
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 128  # sent as the API's max_tokens
    n_per_request: bool = True
    logprobs: bool = False
    concurrency: int = 8
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    timeout_s: float = 120.0
    api_key_env: str | None = None
    on_bad_request: str = "raise"
    extra_body: dict[str, Any] | None = None
    needs_model: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.base_url.startswith(("http://", "https://")),
            "base_url",
            f"must start with http:// or https://, got {self.base_url!r}",
        )
        require(bool(self.model), "model", "must name the model the server serves")
        non_negative("temperature", self.temperature)
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        at_least("max_new_tokens", self.max_new_tokens, 1)
        check_settings(self.concurrency, self.max_retries, self.timeout_s, self.backoff_s,
                       self.max_backoff_s)
        one_of("on_bad_request", self.on_bad_request, ("raise", "skip"))
        if self.api_key_env is not None:
            require(
                self.api_key_env.replace("_", "").isalnum(),
                "api_key_env",
                "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key",
            )

    def cache_config(self) -> dict:
        """The key keeps the field's spelling before it was renamed ``max_new_tokens`` (it was
        ``max_tokens``), so samples cached before the rename stay valid."""
        config = super().cache_config()
        config["max_tokens"] = config.pop("max_new_tokens")
        return config

    def execution_only(self) -> tuple[str, ...]:
        return (
            *super().execution_only(),
            "concurrency",
            "max_retries",
            "backoff_s",
            "max_backoff_s",
            "timeout_s",
            "api_key_env",
        )

    @property
    def url(self) -> str:
        return self.client().url

    def client(self) -> ChatClient:
        """The HTTP client of this config (retries, backoff, concurrency, the key's variable)."""
        return ChatClient(
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            concurrency=self.concurrency,
            url_field="sampler.base_url",
        )

    # -- requests ------------------------------------------------------------------------------

    def requests_for(self, prompt_id: str, prompt: Any) -> list[dict]:
        """The JSON bodies sent for one prompt (one, or ``n`` when the server ignores ``n``)."""
        messages = as_messages(prompt)
        base = prompt_seed(self.seed, prompt_id)
        count, per = (1, self.n) if self.n_per_request else (self.n, 1)
        bodies = []
        for i in range(count):
            body: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "n": per,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "max_tokens": self.max_new_tokens,
                "seed": (base + i) % SEED_MODULUS,
            }
            if self.logprobs:  # the sampled tokens' logprobs only (llama.cpp needs both)
                body["logprobs"] = True
                body["top_logprobs"] = 0
            if self.extra_body:
                body.update(self.extra_body)
            bodies.append(body)
        return bodies

    # -- answers -------------------------------------------------------------------------------

    def rows_from_answer(self, prompt_id: str, first_sample: int, answer: dict) -> list[dict]:
        """Rows of one answer; ``first_sample`` is the sample id of its first choice."""
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SweetspotError(f"{self.url} answered without choices: {str(answer)[:200]}")
        expected = self.n if self.n_per_request else 1
        if len(choices) < expected:
            raise SweetspotError(
                f"{self.url} returned {len(choices)} choice(s) for n={expected}: the server "
                f"ignores 'n'; set sampler.n_per_request=false to send n requests instead"
            )
        usage = answer.get("usage") or {}
        rows = []
        choices = sorted(choices, key=lambda c: c.get("index", 0))[:expected]
        for k, choice in enumerate(choices):
            message = choice.get("message") or {}
            content = message.get("content")
            tokens, logp = _logprob_stats(choice.get("logprobs"))
            if tokens is None and expected == 1:
                tokens = usage.get("completion_tokens")
            rows.append(
                {
                    "prompt_id": prompt_id,
                    "sample_id": first_sample + k,
                    "response": content if isinstance(content, str) else "",
                    "num_tokens": int(tokens) if tokens is not None else None,
                    "finish_reason": choice.get("finish_reason") or "unknown",
                    "logp": logp,
                    "skip_reason": None,
                }
            )
        return rows

    def sample(self, prompts: pd.DataFrame, policy: Any = None) -> pd.DataFrame:
        jobs = []
        for rec in prompts.itertuples(index=False):
            for i, body in enumerate(self.requests_for(rec.prompt_id, rec.prompt)):
                jobs.append((rec.prompt_id, i * body["n"], body))

        def one(post: Post, job: tuple[str, int, dict]) -> list[dict]:
            pid, first, body = job
            try:
                answer = post(body)
            except BadRequest as e:
                if self.on_bad_request == "skip" and e.status == 400:
                    log.warning("openai sampler: prompt %s skipped: %s", pid, e)
                    return _skipped(pid, first, body["n"], "bad_request")
                raise
            return self.rows_from_answer(pid, first, answer)

        rows = [row for part in self.client().map(one, jobs) for row in part]
        table = pd.DataFrame(rows, columns=list(RESPONSE_COLUMNS))
        table["num_tokens"] = table["num_tokens"].astype("Int64")
        table["logp"] = table["logp"].astype(float)
        return table

    def run(
        self, prompts: pd.DataFrame, policy: Any, partial_dir: Any
    ) -> tuple[pd.DataFrame, dict]:
        table, stats = super().run(prompts, policy, partial_dir)
        stats["num_tokens_unknown"] = int(pd.isna(table["num_tokens"]).sum()) if len(table) else 0
        return table, stats


def _logprob_stats(logprobs: Any) -> tuple[int | None, float]:
    """(token count, summed logprob) from a choice's ``logprobs`` (chat or legacy layout)."""
    if not isinstance(logprobs, dict):
        return None, math.nan
    content = logprobs.get("content")
    if isinstance(content, list):
        values = [t.get("logprob") for t in content if isinstance(t, dict)]
    elif isinstance(logprobs.get("token_logprobs"), list):  # the completions layout
        values = logprobs["token_logprobs"]
    else:
        return None, math.nan
    finite = [float(v) for v in values if v is not None]
    return len(values), (math.fsum(finite) if len(finite) == len(values) else math.nan)


def _skipped(prompt_id: str, first: int, count: int, reason: str) -> list[dict]:
    return [
        {
            "prompt_id": prompt_id,
            "sample_id": first + k,
            "response": None,
            "num_tokens": 0,
            "finish_reason": "skipped",
            "logp": math.nan,
            "skip_reason": reason,
        }
        for k in range(count)
    ]

"""One HTTP client for OpenAI-compatible ``/chat/completions`` endpoints (``vllm serve``, SGLang,
TGI, llama.cpp's server, a hosted API), shared by the ``openai`` sampler and the judge's
``openai`` backend, so both retry, back off and fail the same way (plain ``httpx``; the
``openai`` package is not needed).

At most ``concurrency`` requests are in flight (a thread pool over one connection pool). 429, 5xx,
timeouts, connection errors and a 200 whose body is not JSON are retried ``max_retries`` times
(tenacity) with exponential backoff (``backoff_s * 2**attempt``, capped at ``max_backoff_s``; a
``Retry-After`` header raises the wait, never above the cap); then a :class:`SweetspotError`
names the URL. Other 4xx answers are not retried: :class:`BadRequest` carries the server's own
message. When one job fails, the waits of the others end and the jobs not yet started are
cancelled, so a dead server costs one job's retries, not all of them.

The API key: ``api_key_env`` is the NAME of an environment variable; its value is read when a
request is sent, put in the ``Authorization`` header, and never stored, logged or written.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from sweetspot.errors import ConfigError, SweetspotError
from sweetspot.validation import at_least, non_negative, positive

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})

J = TypeVar("J")
T = TypeVar("T")
Post = Callable[[dict], dict]  # a request body in, the decoded JSON answer out


class _Retryable(Exception):
    """An attempt that may succeed if tried again (429, 5xx, a timeout, a dropped connection);
    ``retry_after`` is the server's ``Retry-After`` in seconds when it sent one."""

    def __init__(self, message: str, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message)


class BadRequest(SweetspotError):
    """A 4xx answer other than those in ``RETRY_STATUS``: retrying would not help."""

    def __init__(self, message: str, status: int):
        self.status = status
        super().__init__(message)


def check_settings(concurrency: int, max_retries: int, timeout_s: float, backoff_s: float,
                   max_backoff_s: float) -> None:
    """The checks of the client's settings, for the configs that carry them (the ``openai``
    sampler, the judge's server backend), so a bad value fails at validation, before any work."""
    at_least("concurrency", concurrency, 1)
    at_least("max_retries", max_retries, 0)
    positive("timeout_s", timeout_s)
    non_negative("backoff_s", backoff_s)
    non_negative("max_backoff_s", max_backoff_s)


@dataclass(frozen=True, kw_only=True)
class ChatClient:
    """The module docstring's client. ``server`` and ``url_field`` only word the errors
    ("<server> at <url> answered HTTP 404: ...", "<server> at <url> did not answer ...; is
    <url_field> right?"), so they say which server failed and which setting to check."""

    base_url: str
    api_key_env: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    concurrency: int = 8
    server: str = "the OpenAI-compatible server"
    url_field: str = "base_url"

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def map(self, fn: Callable[[Post, J], T], jobs: Sequence[J]) -> list[T]:
        """``[fn(post, job) for job in jobs]``, ``concurrency`` at a time, in the jobs' order;
        ``post(body)`` sends one request with retries. The first exception (from ``post`` or
        from ``fn``, which runs in the worker so a bad answer stops the rest early) cancels the
        other jobs and is raised."""
        import httpx

        self.headers()  # a missing key fails before any request is sent
        stop = threading.Event()
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0))
        with (
            httpx.Client(limits=limits, timeout=timeout) as client,
            ThreadPoolExecutor(max_workers=self.concurrency) as pool,
        ):
            def post(body: dict) -> dict:
                return self.post(client, body, stop)

            futures = [pool.submit(fn, post, job) for job in jobs]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                stop.set()
                for f in pending:
                    f.cancel()
                raise failed[0].exception()
            return [f.result() for f in futures]

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(
                    "api_key_env", f"the environment variable {self.api_key_env} is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def post(self, client: Any, body: dict, stop: threading.Event) -> dict:
        """POST with retries (tenacity: exponential backoff, ``Retry-After`` honoured up to the
        cap, sleeping on ``stop`` so a failed sibling request cancels the wait); returns the
        decoded JSON answer, or raises :class:`SweetspotError` naming the URL and the attempts."""
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._delay,
            retry=retry_if_exception_type(_Retryable),
            sleep=stop.wait,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(self._attempt, client, body, stop)
        except _Retryable as e:
            raise SweetspotError(
                f"{self.server} at {self.url} did not answer after "
                f"{self.max_retries + 1} attempts (last: {e}); is it running, and is "
                f"{self.url_field} right?"
            ) from None

    def _attempt(self, client: Any, body: dict, stop: threading.Event) -> dict:
        """One POST: the JSON answer, :class:`_Retryable` when trying again may help, or
        :class:`BadRequest` when it would not."""
        import httpx

        if stop.is_set():
            raise SweetspotError("cancelled")
        try:
            resp = client.post(self.url, json=body, headers=self.headers())
        except httpx.TransportError as e:  # connect/read errors and timeouts
            raise _Retryable(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
        if resp.status_code == 200:
            try:
                return resp.json()
            except ValueError:
                raise _Retryable(
                    f"HTTP 200 with a body that is not JSON: {resp.text[:200]!r}"
                ) from None
        if resp.status_code in RETRY_STATUS:
            raise _Retryable(
                f"HTTP {resp.status_code}: {_server_message(resp)}",
                _retry_after(resp.headers.get("retry-after")),
            )
        raise BadRequest(
            f"{self.server} at {self.url} answered HTTP {resp.status_code}: "
            f"{_server_message(resp)}",
            resp.status_code,
        )

    def _delay(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: ``backoff_s * 2**attempt`` capped at
        ``max_backoff_s``; a longer ``Retry-After`` raises it, never above the cap."""
        delay = wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)(state)
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            delay = min(max(delay, error.retry_after), self.max_backoff_s)
        return delay

    def _log_retry(self, state: RetryCallState) -> None:
        log.warning(
            "%s at %s: %s (attempt %d/%d), retrying in %.1fs",
            self.server,
            self.url,
            state.outcome.exception() if state.outcome is not None else "?",
            state.attempt_number,
            self.max_retries + 1,
            state.upcoming_sleep,
        )


def _server_message(resp: Any) -> str:
    """The error text of a JSON error body (``{"error": {"message": ...}}`` or a string), else
    the body's start, so the user sees what the server said, not just a status code."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300] or resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
    return str(body)[:300]


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds; None for a missing, negative or non-numeric value (an HTTP
    date is ignored: the backoff applies)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None

"""A client for any OpenAI-compatible chat endpoint (OpenAI, `vllm serve`, others), shared by the stages.

    cfg = APIConfig(api_base="http://127.0.0.1:8000/v1", concurrency=16, cache_dir="data/cache/hallucinate")
    client = ChatClient(cfg, "Qwen/Qwen2-VL-2B-Instruct")
    results = client.run([ChatRequest([{"role": "user", "content": "Hi"}], {"max_tokens": 32})])
    for r in results:
        print(r.texts[0] if isinstance(r, ChatResponse) else f"failed: {r}")
    print(client.usage)  # requests, prompt_tokens, completion_tokens, cached, cost_usd, retries, failed_requests

`run` is synchronous; inside, one asyncio loop sends the requests with bounded concurrency (a semaphore),
an optional requests-per-minute limit, and its own retries (the `openai` package's are switched off so
that there is one policy): 429, 408, 409, 5xx, timeouts, dropped connections and unreadable bodies are
retried with exponential backoff and full jitter, waiting at least what `Retry-After` asks; other 4xx are
not retried. 401/403/404 mean the key, the permissions or the model name are wrong: that stops the run
(`PovidError`) instead of failing every row. A request that still fails comes back as a retryable
`RowError` in its slot, so one bad request never loses the others.

Responses are cached on disk, one JSON file per (model, messages, params) key under sharded folders,
written atomically (temp file + rename), so several processes can share a cache and a re-run never pays
for the same request twice. The API key is read from the environment variable `api_key_env`, and it is
never logged or put in an error message (messages are scrubbed of it); a server on loopback needs none.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import threading
import time
from typing import Any, Callable, Sequence

from povid_cli.core.errors import PovidError, RowError
from povid_cli.backends.api_config import APIConfig  # noqa: F401 - part of the client's API
from povid_cli.backends.chat_types import ChatRequest, ChatResponse, ResponseCache  # noqa: F401 - part of the client's API


log = logging.getLogger("povid.openai")

MAX_RETRY_AFTER = 600.0  # seconds; a server asking for longer is treated as asking for this
PLACEHOLDER_KEY = "EMPTY"  # what `vllm serve` and most local servers accept when they check no key

# USD per 1M (prompt, completion) tokens, for the cost estimate in the manifest. Unknown models cost 0.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-3.5-turbo": (0.5, 1.5),
    "o4-mini": (1.1, 4.4),
    "o3-mini": (1.1, 4.4),
}

REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i can(?:no|')t|i cannot|i am unable|i'm unable|"
    r"i won'?t|as an ai|unfortunately,? i can)",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """True for the usual "I'm sorry, I can't ..." answers of chat models."""
    return bool(REFUSAL.match(text.replace("\u2019", "'").strip()))


class _Retry(Exception):
    def __init__(self, message: str, retry_after: float | None = None, kind: str = "unreadable response"):
        super().__init__(message)
        self.retry_after = retry_after
        self.kind = kind  # what the circuit breaker counts in a row


class _RateLimiter:
    """Spaces request starts 60/rpm seconds apart (shared by all tasks of one loop)."""

    def __init__(self, rpm: float):
        self.interval = 60.0 / rpm
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


def _retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds; HTTP dates are rare and ignored)."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        s = headers.get("retry-after")
        if s is not None:
            return max(0.0, float(s))
    except (TypeError, ValueError):
        return None
    return None


class ChatClient:
    """Send chat requests to one model on an OpenAI-compatible endpoint. See the module docstring."""

    def __init__(self, cfg: APIConfig, model: str):
        self.cfg = cfg
        self.model = model
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if not key:
            if cfg.api_base is None and not os.environ.get("OPENAI_BASE_URL"):
                raise PovidError(f"no API key: set the {cfg.api_key_env} environment variable "
                                 "(or point --api-base at a local server, which needs none)")
            key = PLACEHOLDER_KEY
        self._key = key
        from povid_cli.core.errors import require

        require("openai", "openai")  # imported here, once, not inside the timed request loop
        # the http library of this openai version logs under its own names; keep it as quiet as httpx
        for name in ("httpx2", "httpcore2"):
            logging.getLogger(name).setLevel(logging.getLogger("httpx").level or logging.WARNING)
        self.cache = ResponseCache(cfg.cache_dir) if cfg.cache_dir else None
        self.usage: dict[str, float] = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                        "cached": 0, "cost_usd": 0.0, "retries": 0, "failed_requests": 0}
        self._lock = threading.Lock()
        self._pause_until = 0.0  # monotonic time before which no request is sent (after a Retry-After)
        self._streak: tuple[str, int] = ("", 0)  # the last server error kind and how many times in a row

    def __repr__(self) -> str:  # no key in reprs either
        return f"ChatClient(model={self.model!r}, api_base={self.cfg.api_base!r})"

    # -- public --------------------------------------------------------------------------------------
    def run(self, requests: Sequence[ChatRequest],
            on_result: Callable[[int, ChatResponse | RowError], None] | None = None) -> list[ChatResponse | RowError]:
        """Send all requests (cache first); results in request order, a RowError where one failed."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run_async(requests, on_result))
        # Called from inside a running loop (a notebook): run ours in a thread of its own.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as ex:
            return ex.submit(asyncio.run, self.run_async(requests, on_result)).result()

    async def run_async(self, requests: Sequence[ChatRequest],
                        on_result: Callable[[int, ChatResponse | RowError], None] | None = None) -> list[ChatResponse | RowError]:
        results: list[ChatResponse | RowError | None] = [None] * len(requests)
        same: dict[str, list[int]] = {}  # identical requests in one run are sent once
        for i, req in enumerate(requests):
            key = req.key(self.model)
            if key in same:
                same[key].append(i)
                continue
            hit = self.cache.get(key) if self.cache else None
            if hit is not None:
                results[i] = hit
                self._add(cached=1)
                if on_result:
                    on_result(i, hit)
            else:
                same[key] = [i]
        todo = [ix[0] for ix in same.values() if results[ix[0]] is None]
        for ix in same.values():  # duplicates of a cached request
            if results[ix[0]] is not None:
                for j in ix[1:]:
                    results[j] = results[ix[0]]
                    self._add(cached=1)
                    if on_result:
                        on_result(j, results[j])
        if todo:
            from openai import AsyncOpenAI

            client = AsyncOpenAI(api_key=self._key, base_url=self.cfg.api_base, max_retries=0,
                                 timeout=self.cfg.timeout, **_http_client())
            sem = asyncio.Semaphore(max(1, self.cfg.concurrency))
            limiter = _RateLimiter(self.cfg.rpm) if self.cfg.rpm else None

            async def one(i: int) -> None:
                async with sem:
                    res = await self._send(client, requests[i], limiter)
                for j in same[requests[i].key(self.model)]:
                    results[j] = res
                    if on_result:
                        on_result(j, res)

            tasks = [asyncio.create_task(one(i)) for i in todo]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                # a setup problem (bad key) or an interrupt: stop the others before closing their client
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            finally:
                await client.close()
        return results  # type: ignore[return-value]

    def forget(self, request: ChatRequest) -> None:
        """Drop a cached response (e.g. an empty answer the caller wants to ask for again next run)."""
        if self.cache:
            self.cache.drop(request.key(self.model))

    def scrub(self, text: str) -> str:
        """`text` with the API key (and anything shaped like an OpenAI key) masked."""
        if self._key and self._key != PLACEHOLDER_KEY:
            text = text.replace(self._key, "***")
        return re.sub(r"sk-[A-Za-z0-9_\-*]{6,}", "sk-***", text)

    # -- internals -----------------------------------------------------------------------------------
    def _add(self, **kv: float) -> None:
        with self._lock:
            for k, v in kv.items():
                self.usage[k] = self.usage.get(k, 0) + v

    async def _send(self, client, req: ChatRequest, limiter: _RateLimiter | None) -> ChatResponse | RowError:
        attempts = self.cfg.max_retries + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                self._add(retries=1)
            if limiter:
                await limiter.wait()
            pause = self._pause_until - time.monotonic()
            if pause > 0:  # the server said "slow down" to one of us: every request waits
                await asyncio.sleep(pause)
            try:
                resp = await self._once(client, req)
            except _Retry as e:
                last = str(e)
                self._count_error(e.kind, last)
                if e.retry_after is not None:
                    self._pause_until = max(self._pause_until, time.monotonic() + min(e.retry_after, MAX_RETRY_AFTER))
                if attempt + 1 >= attempts:
                    break
                # full jitter on an exponential ladder, but never sooner than the server asked
                delay = random.uniform(0, min(self.cfg.max_backoff, self.cfg.backoff * 2 ** attempt))
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, MAX_RETRY_AFTER))
                log.info("retrying in %.2fs after %s (attempt %d/%d)", delay, last, attempt + 1, attempts)
                await asyncio.sleep(delay)
                continue
            except RowError as e:
                self._add(failed_requests=1)
                return e
            self._streak = ("", 0)
            if self.cache:
                self.cache.put(req.key(self.model), resp)
            return resp
        self._add(failed_requests=1)
        return RowError(f"request failed after {attempts} attempt(s): {last}", retryable=True, kind="transient")

    def _count_error(self, kind: str, message: str) -> None:
        """The circuit breaker: a server failing the same way N times in a row is down, not busy; stop the
        stage with one line instead of retrying every row for minutes. Rate limits (429) never count."""
        limit = self.cfg.max_consecutive_errors
        if not limit or kind == "HTTP 429":
            return
        with self._lock:
            n = self._streak[1] + 1 if self._streak[0] == kind else 1
            self._streak = (kind, n)
        if n >= limit:
            where = self.cfg.api_base or os.environ.get("OPENAI_BASE_URL") or "api.openai.com"
            raise PovidError(f"the server at {where} failed {n} requests in a row ({message}); stopping: the rows "
                             "not done stay retryable, run the same command again once it answers "
                             "(--max-consecutive-errors 0 never stops)")

    async def _once(self, client, req: ChatRequest) -> ChatResponse:
        import openai

        body = {"model": self.model, "messages": req.messages, **req.params}
        body.update(body.pop("extra_body", None) or {})
        self._add(requests=1)
        t0 = time.monotonic()
        try:
            # `post` (the SDK's documented way to call any endpoint) keeps its auth, headers and error types
            # but skips its typed transform of the messages and the pydantic model of the answer: a third
            # less CPU per request, which is what bounds throughput at high concurrency. The wait_for is a
            # guard over the client's own timeout: a server that trickles bytes must not hang us.
            data = await asyncio.wait_for(client.post("/chat/completions", body=body, cast_to=object),
                                          timeout=self.cfg.timeout + 5)
        except (openai.APITimeoutError, asyncio.TimeoutError):
            raise _Retry(f"timed out after {self.cfg.timeout:g}s", kind="timeout") from None
        except openai.APIConnectionError as e:
            raise _Retry(f"connection error: {self.scrub(str(e))}", kind="connection error") from None
        except openai.APIStatusError as e:
            status = e.status_code
            msg = self.scrub(_short(e))
            if status in (408, 409, 429) or status >= 500:
                raise _Retry(f"HTTP {status}: {msg}", _retry_after(e.response.headers), kind=f"HTTP {status}") from None
            if status in (401, 403):
                raise PovidError(f"the API refused the key from ${self.cfg.api_key_env} (HTTP {status}): {msg}") from None
            if status == 404:
                raise PovidError(f"HTTP 404 from the API: is model {self.model!r} served there? {msg}") from None
            raise RowError(f"HTTP {status}: {msg}", kind="api") from None
        except openai.APIResponseValidationError as e:
            raise _Retry(f"unreadable response: {self.scrub(_short(e))}") from None
        except ValueError as e:  # a body that is not JSON
            raise _Retry(f"unreadable response: {type(e).__name__}: {self.scrub(str(e))[:200]}") from None
        log.debug("completion from %s in %.2fs", self.model, time.monotonic() - t0)
        try:
            choices = data["choices"]
            texts = [(c.get("message") or {}).get("content") or "" for c in choices]
            reasons = [c.get("finish_reason") or "" for c in choices]
            if not texts or not all(isinstance(t, str) for t in texts):
                raise ValueError("no text choices")
            u = data.get("usage") or {}
            pt, ct = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # JSON, but not a chat completion
            raise _Retry(f"unreadable response: not a chat completion ({type(e).__name__}: {str(e)[:80]})") from None
        price = PRICES.get(self.model) or PRICES.get(self.model.split("/")[-1]) or (0.0, 0.0)
        self._add(prompt_tokens=pt, completion_tokens=ct, cost_usd=(pt * price[0] + ct * price[1]) / 1e6)
        return ChatResponse(texts, reasons, {"prompt_tokens": pt, "completion_tokens": ct}, cached=False)


def _http_client() -> dict:
    """The SDK's aiohttp transport when aiohttp is installed: about half the CPU per request of its
    default httpx one, which is what bounds throughput with many requests in flight on a small machine."""
    try:
        import aiohttp  # noqa: F401
        from openai import DefaultAioHttpClient

        return {"http_client": DefaultAioHttpClient()}
    except Exception:  # noqa: BLE001 - an older SDK or no aiohttp: the default transport works too
        return {}


def _short(e: Exception) -> str:
    """The server's error message without the request dump some SDK versions add."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        m = body.get("message") or (err.get("message") if isinstance(err, dict) else None)
        if m:
            return str(m)[:300]
    return str(getattr(e, "message", None) or e)[:300]


def usage_of(client: ChatClient, before: dict[str, float]) -> dict[str, float]:
    """What the client spent since `before` (a copy of client.usage), for a stage's Result.usage."""
    return {k: v - before.get(k, 0) for k, v in client.usage.items()}


__all__ = ["APIConfig", "ChatClient", "ChatRequest", "ChatResponse", "ResponseCache", "is_refusal",
           "usage_of", "PLACEHOLDER_KEY", "PRICES"]

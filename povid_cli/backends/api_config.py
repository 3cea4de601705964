"""The API client's options: one group shared by every stage and job that talks to an API server.

Kept apart from the client itself (openai_client.py, which imports asyncio and the SDK), so that the
commands can declare these options without importing either.
"""

from __future__ import annotations

from dataclasses import dataclass

from povid_cli.core.options import Options, opt

PANEL = "API client (openai backends)"


@dataclass(frozen=True)
class APIConfig(Options):
    """Where to send requests and how hard to push. None of these change a response, so they stay out of
    every stage's config hash. One group, shared by every stage that talks to an API (hallucinate,
    sample, filter's judge): flat flags on the command line (--api-base, --concurrency, ...), a
    [<stage>.api] table (or flat keys) in povid.toml."""

    api_base: str | None = opt(None, "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 for `vllm serve` [default: api.openai.com or $OPENAI_BASE_URL].", hash=False, panel=PANEL)
    api_key_env: str = opt("OPENAI_API_KEY", "Environment variable that holds the API key (the key itself is never printed or stored; a local server needs none).", hash=False, panel=PANEL)
    concurrency: int = opt(16, "Requests in flight at once.", hash=False, min=1, panel=PANEL)
    rpm: float | None = opt(None, "At most this many requests per minute [default: no limit].", hash=False, min=0.1, panel=PANEL)
    timeout: float = opt(60.0, "Seconds per request before it is retried.", hash=False, min=0.1, panel=PANEL)
    max_retries: int = opt(5, "Retries of a request after 429 / 5xx / timeouts (exponential backoff with jitter, Retry-After honoured).", hash=False, min=0, panel=PANEL)
    max_consecutive_errors: int = opt(20, "Stop after this many server errors of one kind in a row (5xx, timeouts, "
                                      "refused connections; not rate limits), naming the server and the error; the "
                                      "rows not done stay retryable (0: never stop).", hash=False, min=0, panel=PANEL)
    cache_dir: str | None = opt(None, "Response cache folder [default: DATA/cache/<stage>]: re-runs never pay twice for a request.", hash=False, panel=PANEL)
    backoff: float = opt(1.0, "First backoff in seconds; doubles per retry up to max_backoff.", hash=False, min=0.0, cli=False)
    max_backoff: float = opt(60.0, "Longest backoff in seconds.", hash=False, min=0.0, cli=False)

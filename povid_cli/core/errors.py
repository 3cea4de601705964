"""The error kinds the CLI knows how to show.

Anything that is the user's input or environment (a bad path, a missing extra, a dataset that is not
a povid dataset) raises a `PovidError`: the CLI prints its message as one red line and exits with
`exit_code`. Only `TransientError` is retried (rate limits, 5xx, timeouts).
"""

from __future__ import annotations


class PovidError(Exception):
    """A domain error: shown as one line, never as a traceback."""

    exit_code = 1


class UsageError(PovidError):
    """Bad flags or arguments (exit code 2, like click's own usage errors)."""

    exit_code = 2


class NotADatasetError(PovidError):
    """A folder that is not (or must not become) a povid dataset."""


class MissingExtraError(PovidError):
    """An optional dependency is not installed."""

    def __init__(self, extra: str, module: str):
        super().__init__(
            f"this needs the '{module}' package, which is not installed: pip install 'povid[{extra}]'"
        )
        self.extra = extra
        self.module = module


class TransientError(PovidError):
    """A failure that may go away on retry (HTTP 429/5xx, timeouts, dropped connections)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) arrived: the run stops, exit 130. A KeyboardInterrupt, not an Exception, so that
    no `except Exception` that turns a row's error into a failed row can ever swallow it: the shard in
    progress is not committed, and the next run computes it."""

    def __init__(self, message: str = "interrupted; finished shards are kept, run the same command again to resume"):
        super().__init__(message)
        self.message = message


class RowError(Exception):
    """One row could not be processed; the runner records it in failed/<stage>/ and goes on.

    `retryable` rows are tried again on the next run; the others stay failed until their input or the
    stage's config changes.
    """

    def __init__(self, message: str, *, retryable: bool = False, kind: str | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.kind = kind or ("transient" if retryable else "invalid")


def require(module: str, extra: str):
    """Import an optional dependency or raise MissingExtraError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        if e.name and e.name.split(".")[0] != module.split(".")[0]:
            raise PovidError(f"importing {module} failed: {e}") from e
        raise MissingExtraError(extra, module) from e

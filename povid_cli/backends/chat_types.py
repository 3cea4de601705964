"""What the chat client sends and gets back, and its on-disk response cache (keyed by model + request)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ChatRequest:
    """One chat completion: the messages and the sampling params (temperature, max_tokens, n, seed, ...)."""

    messages: list[dict]
    params: dict = field(default_factory=dict)

    def key(self, model: str) -> str:
        blob = json.dumps({"model": model, "messages": self.messages, "params": self.params},
                          sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class ChatResponse:
    texts: list[str]                     # one per choice (n)
    finish_reasons: list[str]
    usage: dict = field(default_factory=dict)  # prompt_tokens, completion_tokens of this response
    cached: bool = False                 # served from the on-disk cache (nothing was paid)


class ResponseCache:
    """One JSON file per request key: <dir>/<k[:2]>/<k[2:4]>/<k>.json, written atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / f"{key}.json"

    def get(self, key: str) -> ChatResponse | None:
        p = self.path(key)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            return ChatResponse(list(d["texts"]), list(d["finish_reasons"]), dict(d.get("usage") or {}), cached=True)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):  # a torn or foreign file: treat as a miss
            return None

    def put(self, key: str, resp: ChatResponse) -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        blob = json.dumps({"texts": resp.texts, "finish_reasons": resp.finish_reasons, "usage": resp.usage},
                          ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(blob)
            os.replace(tmp, p)  # atomic: readers see the old file or the whole new one
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def drop(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass

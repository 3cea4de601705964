"""The answer cache of `povid eval`: an append-only JSON-lines file, one line per answer, for every backend.

    cache = AnswerCache("results.cache/answers.jsonl")
    key = answer_key(setting, prompt, image_sha256)       # setting: model_identity(...) + sampling
    cache.get(key) or cache.put(key, {"text": ..., "finish_reason": ..., "completion_tokens": ...})

Each answer is written and flushed as soon as it exists, so a killed run loses at most the answers in
flight; the next run with the same settings reads the file and asks the model only for what is
missing. A torn last line (a kill mid-write) is skipped. The key covers what decides an answer: the
model (a local folder by its files' names, sizes and times; a hub or server name as given), the
adapter's content, the backend, dtype, decoding settings, the prompt and the image's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".pt", ".gguf")


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(model: str) -> str:
    """A local model folder -> hash of its weight/config files' names, sizes and mtimes (hashing the
    bytes of a 7B checkpoint would take a minute); anything else (a hub id, a served name) -> itself."""
    p = Path(model)
    if not p.is_dir():
        return model
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir()
                   if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    return f"{p.resolve()}#{_sha(files)[:16]}"


def adapter_identity(adapter: str | None) -> str | None:
    """The sha256 of a LoRA adapter's config and weights (small enough to hash: a retrained adapter in
    the same folder must not reuse the old answers)."""
    if not adapter:
        return None
    h = hashlib.sha256()
    for f in sorted(Path(adapter).iterdir()):
        if f.is_file() and f.name.startswith("adapter_"):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def answer_key(setting: dict, prompt: str, image_sha256: str) -> str:
    return _sha({"setting": setting, "prompt": prompt, "image": image_sha256})


class AnswerCache:
    """key -> answer record, backed by an append-only JSONL file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.records[rec["key"]] = rec
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a kill, or foreign: that answer is asked again
        self._f = None

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, key: str, record: dict) -> None:
        rec = {"key": key, **record}
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
            if self._f.tell() and not self._ends_with_newline():
                self._f.write("\n")  # after a torn line: start clean so this record is readable
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()
        self.records[key] = rec

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

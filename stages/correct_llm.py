"""The LLM backends of `correct`: a prompt (prompts/correct_answer.txt), pure `format_request` /
`parse_response`, and the chat client looked up by name (`registry.load("llm", config.backend)`; "openai"
= any OpenAI-compatible endpoint through the shared async client with retries, rate limit and cache).

The model gets the question, the ground truth (the item's chosen answer and its objects) and the target
model's answer, and is asked for a minimal correction: the answer unchanged when nothing is wrong, NONE
when nothing of it is right (the correction is then ""). Empty replies and refusals are RowErrors with a
reason, never corrections. What changed is a word-level diff of the two answers (case and punctuation
kept), each change with a reason: the absent COCO objects it removes, or that the corrector changed it.
"""

from __future__ import annotations

import json
import re

from povid_cli.backends.openai_client import ChatRequest, ChatResponse, is_refusal, usage_of
from povid_cli.core.errors import RowError
from povid_cli.core.templates import render

from stages.chat_step import ChatStep, user_content
from stages.correct_rules import absent_objects
from stages.textsim import opcodes

DEFAULT_MODEL = "gpt-4o-mini"
PROMPTS = ("correct_answer",)
NOTHING_LEFT = "NONE"


class LLMCorrector(ChatStep):
    """Asks a chat LLM (or VLM, with send_image) for a minimal correction of each answer (one request each)."""

    prompts = PROMPTS

    def __init__(self, config):
        super().__init__(config, DEFAULT_MODEL)
        self.version = self.prompts_version("correct")

    def correct(self, jobs: list[dict]) -> tuple[list, dict]:
        """Per job ({item, original, truth}): (corrected, changes) or a RowError; and the usage."""
        before = dict(self.client.usage)
        out: list = [None] * len(jobs)
        todo, requests = [], []
        for i, job in enumerate(jobs):
            try:
                requests.append(format_request(job["item"], job["original"], self.config))
                todo.append(i)
            except RowError as e:
                out[i] = e
        for i, req, resp in zip(todo, requests, self.client.run(requests) if requests else []):
            job = jobs[i]
            if not isinstance(resp, ChatResponse):
                out[i] = RowError(self.client.scrub(str(resp)), kind=resp.kind, retryable=resp.retryable)
                continue
            try:
                out[i] = parse_response(resp.texts[0] if resp.texts else "", job["original"], job["truth"])
            except RowError as e:
                if e.retryable:
                    self.client.forget(req)  # ask again next run instead of replaying the cache
                e.detail = json.dumps({"response": self.client.scrub((resp.texts or [""])[0][:300])})
                out[i] = e
        return out, usage_of(self.client, before)


def format_request(item: dict, original: str, c) -> ChatRequest:
    """The chat request for one answer: the question, the ground truth, the answer to correct."""
    objects = item.get("objects")
    reference = (item.get("chosen") or "").strip() if item.get("has_answer") is not False else ""
    text = render("correct_answer", prompt=item.get("prompt") or "", reference=reference or "(none)",
                  objects=", ".join(objects) if objects else "(not listed: trust the reference answer)",
                  answer=original)
    content = user_content(text, item, c.send_image)
    return ChatRequest([{"role": "user", "content": content}],
                       {"temperature": c.temperature, "max_tokens": c.max_tokens, "seed": c.seed})


def parse_response(text: str, original: str, truth: set[str]) -> tuple[str, list[dict]]:
    """(corrected, changes) from the corrector's reply; RowError when it is no usable correction."""
    corrected = _clean(text)
    if not corrected:
        raise RowError("empty response", kind="empty", retryable=True)
    if is_refusal(corrected) and not is_refusal(original):
        raise RowError(f"the model refused: {corrected[:80]!r}", kind="refusal")
    if corrected.rstrip(".").upper() == NOTHING_LEFT:
        corrected = ""
    return corrected, diff_changes(original, corrected, truth)


def diff_changes(original: str, corrected: str, truth: set[str]) -> list[dict]:
    """The spans of `original` the correction removed or changed ({from, to, reason}), in order."""
    if _norm(original) == _norm(corrected):
        return []
    a, b = original.split(), corrected.split()
    out = []
    for op, i1, i2, j1, j2 in opcodes(a, b):
        if op == "equal":
            continue
        src, dst = " ".join(a[i1:i2]), " ".join(b[j1:j2])
        absent = absent_objects(src, truth) if truth is not None else []
        if absent:
            reason = f"names {'an absent object' if len(absent) == 1 else 'absent objects'}: {', '.join(absent)}"
        else:
            reason = "changed by the corrector" if dst else "removed by the corrector"
        out.append({"from": src, "to": dst, "reason": reason})
    return out


def _norm(s: str) -> str:
    return " ".join(s.split())


def _clean(text: str) -> str:
    """The answer without the wrappers chat models like to add (a code fence, a label, quotes)."""
    m = re.search(r"```(?:\w+)?\s*(.*?)```", text or "", re.DOTALL)
    t = (m.group(1) if m else text or "").strip()
    t = re.sub(r"^\s*(corrected answer|corrected|answer)\s*:\s*", "", t, flags=re.IGNORECASE)
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        t = t[1:-1]
    return t.strip()


__all__ = ["LLMCorrector", "format_request", "parse_response", "diff_changes"]

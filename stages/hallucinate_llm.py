"""The LLM backends of `hallucinate`: a prompt template, pure `format_request` / `parse_response`, and the
chat client a plug-in looked up by name (`registry.load("llm", config.backend)`; "openai" = any
OpenAI-compatible endpoint through the shared async client with retries, rate limit and cache).

Prompts: prompts/hallucinate_caption.txt (captions, descriptions), prompts/hallucinate_reasoning.txt (VQA,
reasoning) and prompts/hallucinate_format.txt (plain or JSON answers). Answers that are empty, refusals,
identical to the input or (with `structured`) not the JSON asked for are RowErrors with a reason, never
rejected answers.
"""

from __future__ import annotations

import json
import re

from povid_cli.backends.openai_client import ChatRequest, ChatResponse, is_refusal, usage_of
from povid_cli.core.errors import RowError
from povid_cli.core.templates import load_prompt, render

from stages.chat_step import ChatStep, user_content
from stages.hallucinate_rules import mentions
from stages.textsim import opcodes
from stages.rules_words import COLORS, NUMBERS, POSITION, RELATIONS, SIZE_STATE

TYPES = ("object", "attribute", "relation", "reasoning")
DEFAULT_MODEL = "gpt-4o-mini"
PROMPTS = ("hallucinate_caption", "hallucinate_reasoning", "hallucinate_format")


class LLMHallucinator(ChatStep):
    """Asks a chat LLM to rewrite each answer with a few hallucinations (one request per item, n choices)."""

    prompts = PROMPTS

    def __init__(self, config):
        super().__init__(config, DEFAULT_MODEL)
        self.version = self.prompts_version("hallucinate") + ("+json" if config.structured else "")

    def rewrite(self, rows: list[dict]):
        """Per row: a list of (rejected, edits) or RowError (one per choice); and the usage."""
        before = dict(self.client.usage)
        out: list = [None] * len(rows)
        todo, requests = [], []
        for i, row in enumerate(rows):
            try:
                requests.append(format_request(row, self.config))
                todo.append(i)
            except RowError as e:
                out[i] = [e]
        for i, req, resp in zip(todo, requests, self.client.run(requests) if requests else []):
            row = rows[i]
            if not isinstance(resp, ChatResponse):
                out[i] = [RowError(self.client.scrub(str(resp)), kind=resp.kind, retryable=resp.retryable)]
                continue
            answers, forget = [], False
            for j, text in enumerate(resp.texts[: self.config.n]):
                try:
                    answers.append(parse_response(text, row["chosen"], self.config.structured))
                except RowError as e:
                    forget = forget or e.retryable  # ask again next run instead of replaying the cache
                    e.detail = json.dumps({"choice": j, "response": self.client.scrub(text[:300])})
                    answers.append(e)
            if len(resp.texts) < self.config.n:  # a server that ignores `n`
                forget = True
                answers.append(RowError(f"the server returned {len(resp.texts)} of {self.config.n} answers asked for "
                                        "(does it support n?)", kind="missing", retryable=True))
            if forget:
                self.client.forget(req)
            out[i] = answers
        return out, usage_of(self.client, before)


def format_request(row: dict, c) -> ChatRequest:
    """The chat request for one item: the template for its task, the answer to rewrite, the format asked."""
    formats = dict(line.split(": ", 1) for line in load_prompt("hallucinate_format").strip().splitlines())
    template = "hallucinate_caption" if row.get("task") == "caption" else "hallucinate_reasoning"
    text = render(template, prompt=row.get("prompt") or "", answer=row["chosen"], k=str(c.edits),
                  format=formats["JSON" if c.structured else "PLAIN"])
    content = user_content(text, row, c.send_image)
    params = {"temperature": c.temperature, "max_tokens": c.max_tokens, "seed": c.seed}
    if c.n > 1:
        params["n"] = c.n
    if c.structured:
        params["response_format"] = {"type": "json_object"}
    return ChatRequest([{"role": "user", "content": content}], params)


def parse_response(text: str, chosen: str, structured: bool) -> tuple[str, list[dict]]:
    """(rejected, edits) from one answer of the LLM; RowError when it is not a usable rewrite."""
    edits = None
    if structured:
        try:
            obj = json.loads(_strip_fence(text))
            rejected = obj["rejected"]
            if not isinstance(rejected, str):
                raise TypeError("rejected is not a string")
            edits = [{"from": str(e.get("from") or ""), "to": str(e.get("to") or ""),
                      "type": e.get("type") if e.get("type") in TYPES else None}
                     for e in obj.get("edits") or [] if isinstance(e, dict)]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            if text.strip() and is_refusal(text):
                raise RowError("the model refused", kind="refusal") from None
            raise RowError(f"response is not the JSON asked for ({type(e).__name__}): {text[:80]!r}",
                           kind="unparseable", retryable=True) from None
    else:
        rejected = _clean(text)
    rejected = rejected.strip()
    if not rejected:
        raise RowError("empty response", kind="empty", retryable=True)
    if is_refusal(rejected):
        raise RowError(f"the model refused: {rejected[:80]!r}", kind="refusal")
    if _norm(rejected) == _norm(chosen):
        raise RowError("the response is identical to the chosen answer", kind="identical")
    if edits is None:
        edits = diff_edits(chosen, rejected)
    return rejected, edits


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def _strip_fence(text: str) -> str:
    m = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    return (m.group(1) if m else text).strip()


def _clean(text: str) -> str:
    """The answer without the wrappers chat models like to add (a code fence, a label, quotes)."""
    t = _strip_fence(text)
    t = re.sub(r"^\s*(rewritten answer|answer|rejected)\s*:\s*", "", t, flags=re.IGNORECASE)
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        t = t[1:-1]
    return t.strip()


_WORDS = {w: "attribute" for w in COLORS + NUMBERS + list(SIZE_STATE) + list(POSITION)}
_WORDS.update({w: "relation" for pat, rep in RELATIONS for w in (pat, rep) if "(" not in w and "?" not in w})


def classify(src: str, dst: str, chosen: str) -> str | None:
    """A best guess at the kind of one free-text edit (the LLM backend's plain mode)."""
    from stages.hallucinate_rules import is_yes_no

    if is_yes_no(chosen) and re.match(r"\s*(yes|no)\b", src, re.IGNORECASE):
        return "reasoning"
    present = {c for _, c in mentions(chosen)}
    if any(c not in present for _, c in mentions(dst)):
        return "object"
    for phrase in sorted(_WORDS, key=len, reverse=True):
        if re.search(rf"\b{re.escape(phrase)}\b", f"{src} {dst}", re.IGNORECASE):
            return _WORDS[phrase]
    return None


def diff_edits(chosen: str, rejected: str) -> list[dict]:
    """Word-level differences between the answers, as {from, to, type} edits."""
    a, b = re.findall(r"\w+|[^\w\s]", chosen), re.findall(r"\w+|[^\w\s]", rejected)
    out = []
    for op, i1, i2, j1, j2 in opcodes(a, b):
        if op == "equal":
            continue
        src, dst = _join(a[i1:i2]), _join(b[j1:j2])
        out.append({"from": src, "to": dst, "type": classify(src, dst, chosen)})
    return out


def _join(tokens: list[str]) -> str:
    return re.sub(r"\s+([^\w\s])", r"\1", " ".join(tokens))

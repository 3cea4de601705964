"""`hallucinate`: items -> hallucinated (POVID's text-hallucination dispreferred answers).

Input: `items` rows (id, prompt, chosen, has_answer, task, objects, image).
Output columns (schemas.HALLUCINATED): id (f"{item_id}-h{j}"), item_id, rejected, hallucination_types
(object | attribute | relation | reasoning), edits (list of {from, to, type}), backend, model, prompt_version.

Backends:
- `rules` (default): offline and deterministic for a seed and an item id (stages/hallucinate_rules.py).
- `openai`: any OpenAI-compatible chat endpoint, through the shared client
  (povid_cli/backends/openai_client.py: bounded concurrency, rate limit, retries, on-disk cache). Prompts:
  prompts/hallucinate_caption.txt (captions, descriptions) and prompts/hallucinate_reasoning.txt (VQA,
  reasoning). Answers that are empty, refusals, identical to the input or (with `structured`) not the
  JSON asked for become failed rows with a reason, never rejected answers.

Items without an answer (`has_answer` false) cannot be hallucinated: they fail, not retryable.
"""

from __future__ import annotations

import difflib
import json
import random
import re
from dataclasses import dataclass, field

from povid_cli.core.errors import RowError, UsageError
from povid_cli.core.schemas import HALLUCINATED
from povid_cli.core.stage import Batch, Result, Stage, failure

from stages.hallucinate_rules import VERSION as RULES_VERSION
from stages.hallucinate_rules import COLORS, NUMBERS, POSITION, RELATIONS, SIZE_STATE, hallucinate, is_yes_no, mentions

BACKENDS = ("rules", "openai")
DEFAULT_MODEL = "gpt-4o-mini"
NO_HASH = {"hash": False}  # settings that change how fast we get answers, not the answers


@dataclass(frozen=True)
class HallucinateConfig:
    backend: str = "rules"
    model: str | None = None           # openai: the model name [default gpt-4o-mini]
    n: int = 1                         # rejected answers per item
    seed: int = 0
    structured: bool = False           # openai: ask for JSON with the edits
    send_image: bool = False           # openai: attach the image (for VLM endpoints)
    temperature: float = 0.7
    max_tokens: int = 512
    edits: int = 2                     # openai: how many hallucinations to ask for
    p_object: float = 0.8              # rules: chance to add a co-occurring object
    api_base: str | None = field(default=None, metadata=NO_HASH)  # where it is served does not change it
    api_key_env: str = field(default="OPENAI_API_KEY", metadata=NO_HASH)
    concurrency: int = field(default=16, metadata=NO_HASH)
    rpm: float | None = field(default=None, metadata=NO_HASH)
    timeout: float = field(default=60.0, metadata=NO_HASH)
    max_retries: int = field(default=5, metadata=NO_HASH)
    cache_dir: str | None = field(default=None, metadata=NO_HASH)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown hallucinate backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.backend == "openai" and not self.model:
            object.__setattr__(self, "model", DEFAULT_MODEL)  # so the manifest names the model used
        if self.n < 1:
            raise UsageError("--n must be at least 1")


class HallucinateStage(Stage):
    name = "hallucinate"
    reads = ("items",)
    writes = ("hallucinated",)
    schemas = {"hallucinated": HALLUCINATED}
    Config = HallucinateConfig
    prompts = ("hallucinate_caption", "hallucinate_reasoning", "hallucinate_format")
    batch_size = 64

    def __init__(self, config: HallucinateConfig):
        super().__init__(config)
        if config.backend == "openai":
            # One process, many requests in flight: the whole shard goes to the async client at once.
            self.batch_size = None
            self.max_workers = 1
        else:
            self.prompts = ()  # the rules backend uses no prompt: editing one must not re-run it
        self.client = None

    @property
    def model(self) -> str | None:
        return (self.config.model or DEFAULT_MODEL) if self.config.backend == "openai" else None

    def setup(self) -> None:
        if self.config.backend == "openai":
            from povid_cli.backends.openai_client import APIConfig, ChatClient

            c = self.config
            self.client = ChatClient(APIConfig(api_base=c.api_base, api_key_env=c.api_key_env, concurrency=c.concurrency,
                                               rpm=c.rpm, timeout=c.timeout, max_retries=c.max_retries,
                                               cache_dir=c.cache_dir), self.model)

    def process(self, batch: Batch) -> Result:
        if self.config.backend == "rules":
            return Result.of(self.map_rows(batch.rows, self._rules), "hallucinated")
        return self._openai(batch.rows)

    # -- rules ----------------------------------------------------------------------------------------
    def _rules(self, row: dict) -> list[dict]:
        chosen = _answer(row)
        out = []
        for j in range(self.config.n):
            rng = random.Random(f"{self.config.seed}:{row['id']}:{j}")
            rejected, edits = hallucinate(chosen, task=row.get("task") or "", prompt=row.get("prompt") or "",
                                          objects=row.get("objects"), rng=rng, p_object=self.config.p_object)
            out.append(self._row(row, j, rejected, [e.row() for e in edits], RULES_VERSION))
        return out

    # -- openai ---------------------------------------------------------------------------------------
    def _openai(self, rows: list[dict]) -> Result:
        from povid_cli.backends.openai_client import ChatResponse, is_refusal, usage_of

        before = dict(self.client.usage)
        result = Result(outputs={"hallucinated": []})
        todo, requests = [], []
        for row in rows:
            try:
                _answer(row)
                requests.append(self._request(row))
                todo.append(row)
            except RowError as e:
                result.failed.append(failure(row["id"], str(e), kind=e.kind, retryable=e.retryable))
        responses = self.client.run(requests) if requests else []
        version = self._prompt_version()
        for row, req, resp in zip(todo, requests, responses):
            if not isinstance(resp, ChatResponse):
                result.failed.append(failure(row["id"], self.client.scrub(str(resp)), kind=resp.kind,
                                             retryable=resp.retryable))
                continue
            forget = False
            for j, text in enumerate(resp.texts[: self.config.n]):
                try:
                    rejected, edits = self._parse(text, row["chosen"], is_refusal)
                except RowError as e:
                    forget = forget or e.retryable  # ask again next run instead of replaying the cache
                    result.failed.append(failure(row["id"], str(e), kind=e.kind, retryable=e.retryable,
                                                 detail=json.dumps({"choice": j, "response": self.client.scrub(text[:300])})))
                    continue
                result.outputs["hallucinated"].append(self._row(row, j, rejected, edits, version))
            if len(resp.texts) < self.config.n:  # a server that ignores `n`
                forget = True
                result.failed.append(failure(row["id"], f"the server returned {len(resp.texts)} of {self.config.n} "
                                             "answers asked for (does it support n?)", kind="missing", retryable=True))
            if forget:
                self.client.forget(req)
        result.usage = usage_of(self.client, before)
        return result

    def _prompt_version(self) -> str:
        from povid_cli.core.templates import prompt_hash

        h = "+".join(prompt_hash(p)[:8] for p in self.prompts)
        return f"hallucinate@{h}" + ("+json" if self.config.structured else "")

    def _request(self, row: dict):
        from povid_cli.backends.openai_client import ChatRequest
        from povid_cli.core.templates import load_prompt, render

        c = self.config
        formats = dict(line.split(": ", 1) for line in load_prompt("hallucinate_format").strip().splitlines())
        template = "hallucinate_caption" if row.get("task") == "caption" else "hallucinate_reasoning"
        text = render(template, prompt=row.get("prompt") or "", answer=row["chosen"], k=str(c.edits),
                      format=formats["JSON" if c.structured else "PLAIN"])
        content: str | list = text
        if c.send_image:
            from povid_cli.core.images import data_url

            image = (row.get("image") or {}).get("bytes")
            if not image:
                raise RowError("--send-image: the item has no image bytes", kind="invalid")
            content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
        params = {"temperature": c.temperature, "max_tokens": c.max_tokens, "seed": c.seed}
        if c.n > 1:
            params["n"] = c.n
        if c.structured:
            params["response_format"] = {"type": "json_object"}
        return ChatRequest([{"role": "user", "content": content}], params)

    def _parse(self, text: str, chosen: str, is_refusal) -> tuple[str, list[dict]]:
        edits = None
        if self.config.structured:
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

    def _row(self, row: dict, j: int, rejected: str, edits: list[dict], version: str) -> dict:
        types = sorted({e["type"] for e in edits if e.get("type") in TYPES})
        return {"id": f"{row['id']}-h{j}", "item_id": row["id"], "rejected": rejected, "hallucination_types": types,
                "edits": edits, "backend": self.config.backend, "model": self.model, "prompt_version": version}


TYPES = ("object", "attribute", "relation", "reasoning")


def _answer(row: dict) -> str:
    chosen = row.get("chosen") or ""
    if row.get("has_answer") is False or not chosen.strip():
        raise RowError("the item has no answer to hallucinate from (ingested without one)", kind="no_answer")
    return chosen


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
    """A best guess at the kind of one free-text edit (the openai backend's plain mode)."""
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
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        src, dst = _join(a[i1:i2]), _join(b[j1:j2])
        out.append({"from": src, "to": dst, "type": classify(src, dst, chosen)})
    return out


def _join(tokens: list[str]) -> str:
    return re.sub(r"\s+([^\w\s])", r"\1", " ".join(tokens))

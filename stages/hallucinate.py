"""`hallucinate`: items -> hallucinated (POVID's text-hallucination dispreferred answers).

Input: `items` rows (id, prompt, chosen, has_answer, task, objects, image).
Output columns (schemas.HALLUCINATED): id (f"{item_id}-h{j}"), item_id, rejected, hallucination_types
(object | attribute | relation | reasoning), edits (list of {from, to, type}), backend, model, prompt_version.

Backends, looked up by name in the registry (povid_cli/backends/registry.py):
- `rules` (default): offline and deterministic for a seed and an item id (stages/hallucinate_rules.py).
- any chat LLM, `openai` built in (any OpenAI-compatible endpoint): stages/hallucinate_llm.py formats the
  prompt and parses the answer; the client does concurrency, rate limits, retries and the cache.

Items without an answer (`has_answer` false) cannot be hallucinated: they fail, not retryable.
"""

from __future__ import annotations

from dataclasses import dataclass

from povid_cli.backends import registry
from povid_cli.backends.api_config import APIConfig
from povid_cli.core.errors import RowError
from povid_cli.core.options import Options, group, opt
from povid_cli.core.schemas import HALLUCINATED
from povid_cli.core.stage import Batch, Result, Stage, failure

registry.register("hallucinate", "rules", "stages.hallucinate_rules:RulesHallucinator")
TYPES = ("object", "attribute", "relation", "reasoning")
_LLM = "LLM backends"


def backends() -> tuple[str, ...]:
    """Local rewriters (rules) and every chat LLM in the registry (openai, plug-ins)."""
    return registry.names("hallucinate") + registry.names("llm")


@dataclass(frozen=True)
class HallucinateConfig(Options):
    backend: str = opt("rules", "rules (offline, deterministic) or a chat LLM: openai (any OpenAI-compatible endpoint).",
                       short="-b", choices=backends)
    model: str | None = opt(None, "Model name for an LLM backend [default: gpt-4o-mini].", short="-m", panel=_LLM)
    n: int = opt(1, "Rejected answers per item (ids ITEM-h0, ITEM-h1, ...).", min=1)
    seed: int = opt(0, "Seed: rules picks its edits from it; an LLM backend passes it to the server.")
    structured: bool = opt(False, "Ask for JSON listing the edits (answers that are not that JSON fail).", panel=_LLM)
    send_image: bool = opt(False, "Attach the image as a data URL (for a VLM endpoint).", panel=_LLM)
    temperature: float = opt(0.7, "Sampling temperature.", min=0.0, panel=_LLM)
    max_tokens: int = opt(512, "Longest answer to ask for.", min=1, panel=_LLM)
    edits: int = opt(2, "How many hallucinations to ask for.", min=1, panel=_LLM)
    p_object: float = opt(0.8, "rules: chance to add a co-occurring absent object.", min=0.0, max=1.0)
    api: APIConfig = group(APIConfig)

    def __post_init__(self):
        super().__post_init__()
        if self.backend in registry.names("llm") and not self.model:
            from stages.hallucinate_llm import DEFAULT_MODEL

            object.__setattr__(self, "model", DEFAULT_MODEL)  # so the manifest names the model used


class HallucinateStage(Stage):
    name = "hallucinate"
    reads = ("items",)
    writes = ("hallucinated",)
    schemas = {"hallucinated": HALLUCINATED}
    Config = HallucinateConfig

    def __init__(self, config: HallucinateConfig):
        super().__init__(config)
        if config.backend in registry.names("llm"):
            from stages.hallucinate_llm import LLMHallucinator

            self.backend = LLMHallucinator(config)
        else:
            self.backend = registry.load("hallucinate", config.backend)(config)
        # The backend decides: rules runs batches in every worker; an LLM gets whole shards in one process.
        self.prompts = self.backend.prompts
        self.batch_size = self.backend.batch_size
        self.max_workers = self.backend.max_workers
        self.uses_api = self.backend.uses_api

    def setup(self) -> None:
        self.backend.setup()

    def process(self, batch: Batch) -> Result:
        result = Result(outputs={"hallucinated": []})
        rows = []
        for row in batch.rows:
            chosen = row.get("chosen") or ""
            if row.get("has_answer") is False or not chosen.strip():
                result.failed.append(failure(row["id"], "the item has no answer to hallucinate from (ingested without one)",
                                             kind="no_answer"))
            else:
                rows.append(row)
        answers, result.usage = self.backend.rewrite(rows) if rows else ([], {})
        for row, got in zip(rows, answers):
            for j, answer in enumerate(got):
                if isinstance(answer, RowError):
                    result.failed.append(failure(row["id"], str(answer), kind=answer.kind, retryable=answer.retryable,
                                                 detail=getattr(answer, "detail", None)))
                    continue
                rejected, edits = answer
                types = sorted({e["type"] for e in edits if e.get("type") in TYPES})
                result.outputs["hallucinated"].append({
                    "id": f"{row['id']}-h{j}", "item_id": row["id"], "rejected": rejected, "hallucination_types": types,
                    "edits": edits, "backend": self.config.backend, "model": self.backend.model,
                    "prompt_version": self.backend.version})
        return result

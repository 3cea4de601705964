"""`correct`: items + sampled -> corrected (OPA-DPO / RLAIF-V: the target model's own answers, minimally corrected).

OPA-DPO's point is that the rejected answer should be the model's own (on-policy) answer on the clean
image, and the chosen one that same answer with only its hallucinations corrected. `povid sample --clean`
makes the answers, this stage the corrections, `filter --kinds ...,corrected` the pairs.

Input: `items` (id, prompt, chosen, has_answer, objects, image) and `sampled` (id, item_id, variant,
responses). By default only the answers on the clean image (variant `clean`) are corrected; with
variants "all" the answers on distorted images are too (their pairs still show the clean image: the
correction is the truth about it). Each response of a sampled row is one answer.
Output columns (schemas.CORRECTED): id (f"{sampled_id}#{i}"), item_id, sampled_id, response_index, variant,
original, corrected, changes (list of {from, to, reason}; empty when nothing needed correcting: filter
drops those as no_hallucination), removed_objects (COCO categories the original names and the correction
does not), backend, model, prompt_version.

Backends, looked up by name in the registry (povid_cli/backends/registry.py):
- `rules` (default): offline; cuts the sentences or clauses that name a COCO object absent from the
  item's truth (its `objects` + the objects its chosen answer names), every other character verbatim
  (stages/correct_rules.py).
- any chat LLM, `openai` built in: stages/correct_llm.py asks for a minimal correction given the truth.

An item with neither `objects` nor a chosen answer has no truth to correct against: its answers fail
(kind `no_truth`). An empty answer is passed through (corrected ""): filter drops it as `empty`.
"""

from __future__ import annotations

from dataclasses import dataclass

from povid_cli.backends import registry
from povid_cli.backends.api_config import APIConfig
from povid_cli.core.errors import PovidError, RowError
from povid_cli.core.options import Options, group, opt
from povid_cli.core.schemas import CORRECTED
from povid_cli.core.stage import Batch, Result, Stage, failure

from stages import chair
from stages.correct_rules import ground_truth

registry.register("correct", "rules", "stages.correct_rules:RulesCorrector")
CLEAN = "clean"  # sample --clean's variant (stages/sample.py)
VARIANTS = ("clean", "all")
_LLM = "LLM backends"


def backends() -> tuple[str, ...]:
    """Local correctors (rules) and every chat LLM in the registry (openai, plug-ins)."""
    return registry.names("correct") + registry.names("llm")


@dataclass(frozen=True)
class CorrectConfig(Options):
    backend: str = opt("rules", "rules (offline: cuts the sentences or clauses naming an object the item does not "
                       "have) or a chat LLM: openai (any OpenAI-compatible endpoint; a minimal correction given the "
                       "ground truth).", short="-b", choices=backends)
    variants: str = opt("clean", "Which sampled answers to correct: clean (the model's answers on the clean image, "
                        "`sample --clean`: OPA-DPO) or all (those on distorted images too).", choices=VARIANTS)
    model: str | None = opt(None, "Model name for an LLM backend [default: gpt-4o-mini].", short="-m", panel=_LLM)
    send_image: bool = opt(False, "Attach the image as a data URL (for a VLM endpoint).", panel=_LLM)
    temperature: float = opt(0.0, "Sampling temperature (0: the same correction every time).", min=0.0, panel=_LLM)
    max_tokens: int = opt(512, "Longest correction to ask for.", min=1, panel=_LLM)
    seed: int = opt(0, "Seed passed to the server.", panel=_LLM)
    api: APIConfig = group(APIConfig)

    def __post_init__(self):
        super().__post_init__()
        if self.backend in registry.names("llm") and not self.model:
            from stages.correct_llm import DEFAULT_MODEL

            object.__setattr__(self, "model", DEFAULT_MODEL)  # so the manifest names the model used


class CorrectStage(Stage):
    name = "correct"
    reads = ("items", "sampled")
    writes = ("corrected",)
    schemas = {"corrected": CORRECTED}
    Config = CorrectConfig

    def __init__(self, config: CorrectConfig):
        super().__init__(config)
        if config.backend in registry.names("llm"):
            from stages.correct_llm import LLMCorrector

            self.backend = LLMCorrector(config)
        else:
            self.backend = registry.load("correct", config.backend)(config)
        # The backend decides: rules runs batches in every worker; an LLM gets whole shards in one process.
        self.prompts = self.backend.prompts
        self.batch_size = self.backend.batch_size
        self.max_workers = self.backend.max_workers
        self.uses_api = self.backend.uses_api

    @classmethod
    def check(cls, data) -> None:
        if not data.has("sampled"):
            raise PovidError(f"{data.url} has no sampled answers yet: run `povid sample {data.url} --clean` first "
                             "(the target model's own answers on the clean images)")
        if getattr(data.config, "variants", CLEAN) == CLEAN and not data.has_value("sampled", "variant", (CLEAN,)):
            raise PovidError(f"{data.url} has no answers on the clean images: run `povid sample {data.url} --clean` "
                             "(or correct the answers on distorted images with --variants all)")

    def setup(self) -> None:
        self.backend.setup()

    def process(self, batch: Batch) -> Result:
        result = Result(outputs={"corrected": []})
        sampled = batch.by_item("sampled")
        jobs: list[dict] = []
        for item in batch.rows:
            rows = [s for s in sampled.get(item["id"], []) if self.config.variants == "all" or s["variant"] == CLEAN]
            truth = ground_truth(item) if rows else None
            for s in rows:
                for i, text in enumerate(s.get("responses") or []):
                    job = {"id": f"{s['id']}#{i}", "item": item, "sampled": s, "index": i, "original": text or "",
                           "truth": truth}
                    if truth is None:
                        result.failed.append(failure(job["id"], "the item has neither objects nor a chosen answer "
                                                     "to correct against", kind="no_truth"))
                    else:
                        jobs.append(job)
        ask = [j for j in jobs if j["original"].strip()]  # an empty answer stays empty: nothing to ask
        got, result.usage = self.backend.correct(ask) if ask else ([], {})
        answers = {j["id"]: g for j, g in zip(ask, got)}
        for job in jobs:
            got = answers.get(job["id"], ("", []))
            if isinstance(got, RowError):
                result.failed.append(failure(job["id"], str(got), kind=got.kind, retryable=got.retryable,
                                             detail=getattr(got, "detail", None)))
                continue
            corrected, changes = got
            left = set(chair.find_objects(corrected))
            s = job["sampled"]
            result.outputs["corrected"].append({
                "id": job["id"], "item_id": job["item"]["id"], "sampled_id": s["id"], "response_index": job["index"],
                "variant": s.get("variant"), "original": job["original"], "corrected": corrected,
                "changes": changes, "removed_objects": [c for c in chair.find_objects(job["original"]) if c not in left],
                "backend": self.config.backend, "model": self.backend.model, "prompt_version": self.backend.version})
        result.usage = {**result.usage, "answers": len(jobs),
                        "corrected": sum(1 for r in result.outputs["corrected"] if r["changes"])}
        return result

"""`filter`: candidate (chosen, rejected) pairs -> `pairs` (kept) and `dropped` (with a `drop_reason`).

Input: `items`, plus `given`, `hallucinated`, `sampled` and `corrected` when present (joined on item_id).
Candidates, of the kinds `kinds` names (stages/pair_kinds.py: one function per kind; default text, image):
- `text` pairs: every given pair of the item (the rejected answers its sources gave: POVID, TRL, RLAIF-V,
  ..., `rejected_source` "input"; an older dataset's items carry one in `rejected`), every `hallucinated` row;
- `image` pairs: each of the n responses of every `sampled` row on a distorted image (`variant`);
- `contrast` pairs (only with `kinds` containing contrast; filter then reads `distorted` too): the answer under
  the clean image vs the same answer under each distorted variant (`rejected_image`), stages/contrast.py;
- `corrected` pairs (OPA-DPO): every `corrected` row: chosen = the correction, rejected = the model's own
  answer; `no_hallucination` when the corrector changed nothing, `empty` when it left nothing.
`kinds` selects which kinds are made (default text and image; stages/pair_kinds.py).

Output columns: PAIRS (`id`, `item_id`, `kind`, `prompt`, `chosen`, `rejected`, `image`, `extra_images`,
`variant`, `task`, `source`, `source_id`), then `rejected_source` (hallucinated | input | sampled), `rejected_id`
(the row it came from, `#i` for the i-th sampled response), `model`, `hallucination_types`, and the
scores: `similarity` (word-level, chosen vs rejected), `n_edits` (changed word spans),
`hallucinated_objects` (COCO categories in rejected absent from the ground truth, CHAIR-style),
`changed_attributes` ('yellow->red', '+not', ...), `repetition`, `finish_reason`, `logprob`,
`duplicate_of`, `judge_verdict`, `judge_reason`, for contrast pairs `image_diff` and `changed_area`
(stages/contrast.py), and `weight_score` (with `--weight-by NAME`: the pair's raw
MMedPO-style score, see stages/weights.py; export and train normalise it to a weight in [0.2, 1] over the
whole dataset). `dropped` has the same columns (its images are null:
join `items` on item_id) plus `drop_reason` (a short stable code) and `drop_detail`.

Scores are stored whatever the decision, so pairs can be re-filtered without running anything again.

Duplicates are found across the whole dataset, keeping the first occurrence in shard order. The
stage is `sequential`: shards run in order in one process, and for shards already done `observe`
rebuilds the index from their output, so a cron run that adds a shard never rewrites earlier ones.
The index lives in the stage instance: make one instance per `run_stage` call (the CLI and synth do).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from povid_cli.backends.api_config import APIConfig
from povid_cli.core.errors import RowError, UsageError
from povid_cli.core.options import Options, group, opt
from povid_cli.core.schemas import PAIRS
from povid_cli.core.schemas import item_images
from povid_cli.core.stage import Batch, Result, Stage, failure, pair_id
from povid_cli.core.store import digest

from stages import chair, contrast
from stages.minhash import DedupIndex, Entry
from stages.pair_kinds import DEFAULT_KINDS, KINDS, READS, candidates
from stages.textsim import is_refusal, normalise, repetition, word_diff, words
from stages.weights import WEIGHT_SCORES, raw_score

DROP_REASONS = {
    "no_chosen": "the item has no ground-truth answer",
    "empty": "rejected is empty (corrected pairs: or the correction left nothing)",
    "identical": "rejected equals chosen after folding case, whitespace and punctuation",
    "refusal": "rejected is a refusal ('I'm sorry, I can't ...')",
    "truncated": "generation stopped at max_tokens (finish reason 'length')",
    "repetition": "degenerate repetition (looping n-grams)",
    "too_short": "rejected has too few words",
    "rewritten": "text pair rewritten beyond recognition (similarity below the floor)",
    "no_hallucination": "no detectable hallucination (object, number, colour, attribute or relation); corrected "
                        "pairs: the corrector changed nothing",
    "same_content": "image pair says nothing that chosen does not",
    "off_policy": "log-probability under the clean image below --min-logprob",
    "duplicate": "same rejected answer as an earlier pair",
    "near_duplicate": "near-duplicate (MinHash) of an earlier pair's rejected answer",
    "judge_rejected": "the judge model found no contradiction with the image / ground truth",
    "judge_unclear": "the judge model's reply could not be read as YES or NO",
    **contrast.DROP_REASONS,
}

SCORE_FIELDS = [
    ("rejected_source", pa.string()),
    ("rejected_id", pa.string()),
    ("model", pa.string()),
    ("hallucination_types", pa.list_(pa.string())),
    ("similarity", pa.float64()),
    ("n_edits", pa.int32()),
    ("hallucinated_objects", pa.list_(pa.string())),
    ("changed_attributes", pa.list_(pa.string())),
    ("repetition", pa.float64()),
    ("finish_reason", pa.string()),
    ("logprob", pa.float64()),
    ("duplicate_of", pa.string()),
    ("judge_verdict", pa.string()),
    ("judge_reason", pa.string()),
    ("weight_score", pa.float64()),
    *((n, pa.float64()) for n, _ in contrast.SCORE_FIELDS),
]
PAIRS_OUT = pa.schema(list(PAIRS) + [pa.field(n, t) for n, t in SCORE_FIELDS])
DROPPED = pa.schema(list(PAIRS_OUT) + [pa.field("drop_reason", pa.string()), pa.field("drop_detail", pa.string())])

DEDUP_SCOPES = ("dataset", "prompt", "item")
# What filter keeps per shard of its duplicate index (see observe): about 0.6 KB per kept pair.
DEDUP = pa.schema([("id", pa.string()), ("exact", pa.uint64()), ("scope", pa.string()), ("signature", pa.binary())])


def _llms() -> tuple[str, ...]:
    from povid_cli.backends import registry

    return registry.names("llm")

# Words that carry no content of their own, for the image-pair "says something new" check.
_STOP = set("""a an the and or but of to in on at by for with from as is are was were be been being it its this
that these those there here which who whom whose what where when how why has have had do does did can could will
would shall should may might must i you he she we they me him her us them my your his our their image picture
photo photograph shows show showing shown appears appear seems seem see seen visible also very just some any
other another into onto out up down off than then so such while one""".split())


_T = "Tuning"
_J = "Judge (optional)"
_W = "Weights (optional)"


@dataclass(frozen=True)
class FilterConfig(Options):
    """Every filter is on by default; each option tunes one or switches it off."""

    min_words: int = opt(2, "too_short: drop rejected answers with fewer words (0: off).", min=0, panel=_T)
    min_length_ratio: float = opt(0.2, "too_short: drop rejected answers shorter than this x chosen's words (0: off).",
                                  min=0.0, panel=_T)
    drop_truncated: bool = opt(True, "truncated: drop sampled answers cut at max_tokens (finish reason 'length').",
                               invert="--keep-truncated", panel=_T)
    max_repetition: float = opt(0.5, "repetition: drop answers whose share of repeated word 3-grams is above this "
                                "(1: off).", min=0.0, max=1.0, panel=_T)
    drop_refusals: bool = opt(True, "refusal: drop 'I'm sorry, I can't ...' answers.", invert="--keep-refusals", panel=_T)
    drop_identical: bool = opt(True, "identical: drop rejected answers equal to chosen up to case, whitespace and "
                               "punctuation.", invert="--keep-identical", panel=_T)
    min_similarity: float = opt(0.45, "rewritten: text pairs below this word-level similarity to chosen are dropped "
                                "(0: off).", min=0.0, max=1.0, panel=_T)
    text_hallucination: bool = opt(True, "no_hallucination: text pairs must carry a detectable hallucination (object, "
                                   "number, colour, attribute, relation).", invert="--no-hallucination-check", panel=_T)
    image_hallucination: bool = opt(False, "Image pairs must carry a detectable hallucination too.",
                                    flag="--require-hallucination", panel=_T)
    image_new_content: bool = opt(True, "same_content: image pairs must say something chosen does not.",
                                  invert="--keep-same-content", panel=_T)
    min_logprob: float | None = opt(None, "off_policy: drop sampled answers whose mean token log-prob under the clean "
                                    "image is below this (needs sample --logprobs).", panel=_T)
    dedup: bool = opt(True, "duplicate / near_duplicate: drop exact and near-duplicate rejected answers.",
                      invert="--no-dedup", panel=_T)
    near_dup_threshold: float = opt(0.9, "Estimated Jaccard of word 3-grams (MinHash) at which two rejected answers "
                                    "are near-duplicates (1: exact only).", min=0.01, max=1.0, panel=_T)
    dedup_scope: str = opt("dataset", "Where a duplicate counts: dataset, prompt (same question) or item.",
                           choices=DEDUP_SCOPES, panel=_T)
    judge_model: str | None = opt(None, "judge_rejected: an OpenAI-compatible model must confirm each kept rejected "
                                  "answer contradicts the image / ground truth.", flag="--judge", metavar="MODEL",
                                  panel=_J)
    judge_backend: str = opt("openai", "The chat LLM backend of the judge.", choices=_llms, hash=False, panel=_J)
    judge_image: bool = opt(True, "Send the image to the judge (a VLM); off: judge against the reference answer only.",
                            invert="--judge-text-only", panel=_J)
    judge_max_tokens: int = opt(64, "Longest judge reply.", min=1, panel=_J)
    # hash=False: config_hash adds it only when set, so datasets filtered before this option keep their hash
    weight_by: str | None = opt(None, "Store each pair's raw score NAME as `weight_score` (MMedPO-style pair weights: "
                                "export and `train --weight-column weight` scale it to [0.2, 1] over the dataset): "
                                + "; ".join(f"{k}: {v}" for k, v in WEIGHT_SCORES.items()) + ".",
                                choices=tuple(WEIGHT_SCORES), metavar="NAME", hash=False, panel=_W)
    # hash=False: config_hash adds these only when kinds is not the default, so earlier datasets keep their hash
    kinds: tuple[str, ...] = opt(DEFAULT_KINDS, "Pair kinds to make: text (hallucinated or given rejected answers), "
                                 "image (answers sampled on distorted images), contrast (the answer under the clean vs "
                                 "a distorted image: mDPO, V-DPO, CHiP; reads DATA/distorted), corrected (the model's "
                                 "own answer vs its minimal correction: `povid correct`).", choices=tuple(KINDS),
                                 sep=",", hash=False, metavar="KIND,...")
    min_image_change: float = opt(0.002, "weak_contrast: drop contrast pairs whose distorted image changes less than "
                                  "this share of the pixels (0: off).", min=0.0, max=1.0, hash=False, panel=_T)
    region_check: bool = opt(True, "region_unmentioned: drop local-noise contrast pairs whose answer names none of the "
                             "noised objects.", invert="--keep-unmentioned-region", hash=False, panel=_T)
    api: APIConfig = group(APIConfig)


def _content(ws: list[str]) -> set[str]:
    objs = set(chair.find_objects(ws))
    return {chair.singular(w) for w in ws if w not in _STOP and not w.isdigit() and len(w) > 1} | objs


def score(c: dict, cfg: FilterConfig) -> tuple[str, str] | None:
    """Fill the score columns of candidate `c`; return (drop_reason, detail) or None to keep it."""
    chosen, rejected = c["chosen"], c["rejected"]
    cw, rw = words(chosen), words(rejected)
    diff = word_diff(cw, rw)
    c["similarity"] = round(diff.ratio, 4)
    c["n_edits"] = diff.n_edits
    c["hallucinated_objects"] = chair.hallucinated_objects(rw, cw, c.get("_objects"))
    # Edits the generator declares count when the diff shows them (their content words changed).
    declared = {w for e in c.get("_edits") or [] for w in words(e.get("to")) + words(e.get("from")) if w not in _STOP}
    c["changed_attributes"] = chair.changed_attributes(diff.changes(), declared)
    c["repetition"] = round(repetition(rw), 4)
    if cfg.weight_by:
        c["weight_score"] = raw_score(c, cfg.weight_by)
    kind = c["kind"]
    text, image = kind == "text", kind == "image"

    if kind == "corrected" and not chosen.strip():
        return "empty", "the correction left nothing of the answer"
    if not chosen.strip():
        return "no_chosen", "the item has no answer to prefer"
    if not rejected.strip() or not rw:
        return "empty", ""
    if kind == "corrected" and (not c.get("_changes") or normalise(chosen) == normalise(rejected)):
        return "no_hallucination", "the corrector changed nothing"
    if cfg.drop_identical and normalise(chosen) == normalise(rejected):
        return "identical", ""
    if cfg.drop_refusals and is_refusal(rejected) and not is_refusal(chosen):
        return "refusal", rejected[:80]
    if cfg.drop_truncated and c.get("finish_reason") == "length":
        return "truncated", "finish reason 'length'"
    if c["repetition"] > cfg.max_repetition:
        return "repetition", f"{c['repetition']:.2f} of word 3-grams repeated"
    if len(rw) < cfg.min_words or (cfg.min_length_ratio and len(rw) < cfg.min_length_ratio * len(cw)):
        return "too_short", f"{len(rw)} words vs {len(cw)} in chosen"
    if text and c["similarity"] < cfg.min_similarity:
        return "rewritten", f"similarity {c['similarity']:.2f} < {cfg.min_similarity}"
    has_h = bool(c["hallucinated_objects"] or c["changed_attributes"])
    if (text or image) and (cfg.text_hallucination if text else cfg.image_hallucination) and not has_h:
        return "no_hallucination", f"{diff.n_edits} edit(s), none about objects or attributes"
    if image and cfg.image_new_content and not (_content(rw) - _content(cw)):
        return "same_content", "every content word of rejected is in chosen"
    if kind in ("image", "corrected") and cfg.min_logprob is not None and c.get("logprob") is not None \
            and c["logprob"] < cfg.min_logprob:  # both are the model's own answers
        return "off_policy", f"logprob {c['logprob']:.3f} < {cfg.min_logprob}"
    return None


_YES = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def parse_verdict(text: str) -> tuple[str, str]:
    """('yes' | 'no' | 'unclear', the reason sentence) from a judge reply."""
    m = _YES.match(text or "")
    if not m:
        return "unclear", (text or "").strip()[:200]
    return m.group(1).lower(), (text or "")[m.end():].strip(" .,:;-\n")[:200]


class FilterStage(Stage):
    name = "filter"
    reads = ("items",)
    optional_reads = ("given", "hallucinated", "sampled", "corrected")
    writes = ("pairs", "dropped", "dedup")
    schemas = {"pairs": PAIRS_OUT, "dropped": DROPPED, "dedup": DEDUP}
    observes = ("dedup",)  # what a later run reads of a finished shard: its index entries, nothing else
    Config = FilterConfig
    batch_size = 512
    sequential = True  # keep-first duplicate detection needs shards in order, with state

    def __init__(self, config: FilterConfig):
        super().__init__(config)
        if "contrast" in config.kinds:  # contrast pairs are made from the distorted images
            self.optional_reads = FilterStage.optional_reads + ("distorted",)
        self.index = DedupIndex(config.near_dup_threshold)
        self.client = None
        self.uses_api = bool(config.judge_model)

    def skips(self, output: str) -> frozenset[str]:
        # text, image and corrected pairs never look at pixels (pairs refer to their item's images): only
        # contrast pairs and a judge that is shown the image need the items' image bytes
        needs = "contrast" in self.config.kinds or (self.config.judge_model and self.config.judge_image)
        return frozenset() if output != "items" or needs else frozenset({"image", "extra_images"})

    @classmethod
    def check(cls, data) -> None:
        kinds = getattr(data.config, "kinds", None) or DEFAULT_KINDS
        if "corrected" in kinds and not data.has("corrected"):
            raise UsageError(f"--kinds corrected: {data.url} has no corrected answers yet: run `povid sample "
                             f"{data.url} --clean` and `povid correct {data.url}` first")
        if not any(data.has(r) for k in kinds for r in READS[k]) \
                and ("text" not in kinds or data.all_null("items", "rejected")):
            raise UsageError(f"{data.url} has nothing to filter yet: run `povid hallucinate` and/or `povid distort` + "
                             "`povid sample` first (or ingest data with rejected answers)")

    def config_hash(self) -> str:
        h = super().config_hash()
        if self.config.judge_model:  # the judge prompt matters only when there is a judge
            from povid_cli.core.templates import prompt_hash

            h = digest(h, prompt_hash("filter_judge"))
        if self.config.weight_by:  # a new column's values: only then part of the hash
            h = digest(h, "weight_by", self.config.weight_by)
        kinds = sorted(set(self.config.kinds))
        if kinds != sorted(DEFAULT_KINDS):  # other pairs: only then part of the hash
            h = digest(h, "kinds", kinds)
        if "contrast" in kinds:
            h = digest(h, "contrast", self.config.min_image_change, self.config.region_check)
        return h

    def setup(self) -> None:
        if self.config.judge_model:
            from povid_cli.backends import registry

            self.client = registry.load("llm", self.config.judge_backend)(self.config.api, self.config.judge_model)

    def _scope(self, row: dict) -> str:
        s = self.config.dedup_scope
        scope = "" if s == "dataset" else row["item_id"] if s == "item" else digest(row["prompt"])
        # A corrected pair prefers another answer than the text and image pairs do (the correction, not the
        # ground truth): the same model answer in an image pair does not make it a duplicate.
        return scope + "|corrected" if row.get("kind") == "corrected" else scope

    def observe(self, outputs: dict[str, list[dict]]) -> None:
        """Load the duplicate index entries a finished shard stored (its `dedup` output): no pair is read
        again and no signature recomputed, so a refresh costs what is new."""
        if not self.config.dedup:
            return
        for r in outputs.get("dedup", []):  # contrast pairs are never indexed: see process()
            sig = np.frombuffer(r["signature"], dtype=np.uint32) if r["signature"] else None
            self.index.load(Entry(r["id"], r["exact"], r["scope"], sig))

    def process(self, batch: Batch) -> Result:
        cfg = self.config
        by_item = {name: batch.by_item(name) for name in batch.inputs}
        kept: list[dict] = []
        dropped: list[dict] = []
        failed: list[dict] = []
        entries: list[dict] = []
        for item in batch.rows:
            inputs = {name: rows.get(item["id"], []) for name, rows in by_item.items()}
            for c in candidates(item, inputs, cfg.kinds):
                try:
                    verdict = contrast.score(c, cfg) if c["kind"] == "contrast" else score(c, cfg)
                except Exception as e:  # noqa: BLE001 - one odd row must not take the shard down
                    failed.append(failure(c["id"], f"{type(e).__name__}: {e}", kind="error"))
                    continue
                if verdict is None and cfg.dedup and c["kind"] != "contrast":  # contrast: the answer is the truth
                    match, sig = self.index.check(c["rejected"], self._scope(c))
                    if match is not None:
                        c["duplicate_of"] = match.of
                        verdict = (match.reason, f"of pair {match.of} (jaccard {match.jaccard:.2f})")
                    else:
                        e = self.index.add(c["rejected"], c["id"], self._scope(c), sig)
                        entries.append({"id": e.key, "exact": e.exact, "scope": e.scope,
                                        "signature": e.signature.tobytes() if e.signature is not None else None})
                if verdict is None:
                    kept.append(c)
                else:
                    dropped.append(self._drop(c, *verdict))
        usage: dict[str, float] = {}
        judged = [c for c in kept if c["kind"] != "contrast"]  # a contrast pair has no wrong answer to judge
        if self.client is not None and judged:
            judged, judged_out, failed_j, usage = self._judge(judged)
            passed = {c["id"] for c in judged}
            kept = [c for c in kept if c["kind"] == "contrast" or c["id"] in passed]
            dropped += judged_out
            failed += failed_j
        return Result({"pairs": [_stored(c) for c in kept], "dropped": dropped, "dedup": entries}, failed, usage)

    def _drop(self, c: dict, reason: str, detail: str) -> dict:
        row = _clean(c)
        # the images live in items and distorted: not once per dropped row
        row["image"] = row["extra_images"] = row["rejected_image"] = row["rejected_extra_images"] = None
        row["drop_reason"], row["drop_detail"] = reason, detail or None
        return row

    def _judge(self, kept: list[dict]):
        from povid_cli.backends.openai_client import ChatRequest, ChatResponse, usage_of
        from povid_cli.core.images import data_url
        from povid_cli.core.templates import render

        before = dict(self.client.usage)
        reqs = []
        for c in kept:
            text = render("filter_judge", prompt=c["prompt"], chosen=c["chosen"], rejected=c["rejected"])
            content: list[dict] = [{"type": "text", "text": text}]
            if self.config.judge_image:
                images = [{"type": "image_url", "image_url": {"url": data_url(im["bytes"])}}
                          for im in item_images(c) if im and im.get("bytes")]
                content[:0] = images
            reqs.append(ChatRequest([{"role": "user", "content": content}],
                                    {"temperature": 0, "max_tokens": self.config.judge_max_tokens}))
        out_kept, out_dropped, failed = [], [], []
        for c, res in zip(kept, self.client.run(reqs)):
            if isinstance(res, RowError) or not isinstance(res, ChatResponse):
                failed.append(failure(c["id"], f"judge: {res}", kind=getattr(res, "kind", "error"),
                                      retryable=getattr(res, "retryable", False)))
                continue
            verdict, reason = parse_verdict(res.texts[0] if res.texts else "")
            c["judge_verdict"], c["judge_reason"] = verdict, reason
            if verdict == "yes":
                out_kept.append(c)
            else:
                code = "judge_rejected" if verdict == "no" else "judge_unclear"
                out_dropped.append(self._drop(c, code, reason))
        return out_kept, out_dropped, failed, usage_of(self.client, before)


_COLUMNS = [f.name for f in PAIRS_OUT]


def _clean(c: dict) -> dict:
    return {k: c.get(k) for k in _COLUMNS}


def _stored(c: dict) -> dict:
    """A kept pair as stored: its images are its item's, kept once in `items`, and a contrast pair's rejected
    ones its distorted row's (readers attach them: povid_cli/core/items.py), not copied into every pair."""
    row = _clean(c)
    row["image"] = row["extra_images"] = None
    if row.get("kind") == "contrast":  # the rejected images are its distorted row's: rebuilt where used
        row["rejected_image"] = row["rejected_extra_images"] = None
    return row


__all__ = ["FilterConfig", "FilterStage", "DROP_REASONS", "PAIRS_OUT", "DROPPED", "pair_id", "candidates",
           "score", "parse_verdict"]

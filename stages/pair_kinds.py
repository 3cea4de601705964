"""The kinds of pairs `filter` makes, one small function each: item + its rows of other inputs -> candidates.

    candidates(item, {"hallucinated": [...], "sampled": [...]}, kinds=("text", "image"))

- `text`: the item's given pairs (the rejected answers its sources gave, `rejected_source` "input"; an
  older dataset's item carries one in `rejected`) and every `hallucinated` row;
- `image`: each of the n responses of every `sampled` row on a distorted image (its `variant` names the
  distortion; answers on the clean image, variant `clean`, are no image pair: see `corrected`);
- `contrast` (mDPO, V-DPO, CHiP): the answer under the clean image vs under each distorted variant
  (stages/contrast.py);
- `corrected` (OPA-DPO / RLAIF-V): every `corrected` row: chosen = the correction, rejected = the model's
  own answer (rejected_source "sampled", rejected_id = the corrected row's id = f"{sampled_id}#{i}").

A kind is a function in KINDS and the outputs it reads in READS; `filter --kinds` picks them. Every
candidate keeps the item's columns and its provenance; keys starting with "_" are for scoring only.
"""

from __future__ import annotations

from typing import Callable

from povid_cli.core.stage import pair_id

from stages import chair

CLEAN = "clean"  # sample --clean's variant (stages/sample.py)


def base(item: dict) -> dict:
    return {"item_id": item["id"], "prompt": item["prompt"], "chosen": item.get("chosen") or "",
            "image": item.get("image"), "extra_images": item.get("extra_images"), "task": item.get("task"),
            "source": item.get("source"), "source_id": item.get("source_id"), "_objects": item.get("objects")}


def text_pairs(item: dict, inputs: dict[str, list[dict]]) -> list[dict]:
    b = base(item)
    out = []
    if item.get("rejected") is not None:  # a format-1 dataset: one given rejected answer on the item
        out.append({**b, "kind": "text", "variant": None, "rejected": item["rejected"],
                    "rejected_source": "input", "rejected_id": item["id"], "model": None})
    for g in inputs.get("given", []):  # the sources' own rejected answers, each with the record that gave it
        out.append({**b, "kind": "text", "variant": None, "rejected": g.get("rejected") or "",
                    "rejected_source": "input", "rejected_id": g["id"], "model": g.get("model"),
                    "source": g.get("source") or b["source"], "source_id": g.get("source_id")})
    for h in inputs.get("hallucinated", []):
        out.append({**b, "kind": "text", "variant": None, "rejected": h.get("rejected") or "",
                    "rejected_source": "hallucinated", "rejected_id": h["id"], "model": h.get("model"),
                    "hallucination_types": h.get("hallucination_types"), "_edits": h.get("edits") or []})
    return out


def image_pairs(item: dict, inputs: dict[str, list[dict]]) -> list[dict]:
    b = base(item)
    out = []
    for s in inputs.get("sampled", []):
        if s.get("variant") == CLEAN:
            continue
        finish = s.get("finish_reasons") or []
        lps = s.get("logprobs") or []
        for i, text in enumerate(s.get("responses") or []):
            out.append({**b, "kind": "image", "variant": s.get("variant"), "rejected": text or "",
                        "rejected_source": "sampled", "rejected_id": f"{s['id']}#{i}", "model": s.get("model"),
                        "finish_reason": finish[i] if i < len(finish) else None,
                        "logprob": lps[i] if i < len(lps) else None})
    return out


def corrected_pairs(item: dict, inputs: dict[str, list[dict]]) -> list[dict]:
    b = base(item)
    sampled = {s["id"]: s for s in inputs.get("sampled", [])}
    # The truth the correction was made against: the item's objects and those its chosen answer names.
    truth = list(item.get("objects") or []) + chair.find_objects(item.get("chosen") or "")
    out = []
    for c in inputs.get("corrected", []):
        s = sampled.get(c.get("sampled_id")) or {}
        i = c.get("response_index") or 0
        finish, lps = s.get("finish_reasons") or [], s.get("logprobs") or []
        out.append({**b, "kind": "corrected", "variant": c.get("variant"), "chosen": c.get("corrected") or "",
                    "rejected": c.get("original") or "", "rejected_source": "sampled", "rejected_id": c["id"],
                    "model": s.get("model"), "hallucination_types": ["object"] if c.get("removed_objects") else [],
                    "finish_reason": finish[i] if i < len(finish) else None,
                    "logprob": lps[i] if i < len(lps) else None,
                    "_objects": truth, "_changes": c.get("changes") or []})
    return out


def contrast_pairs(item: dict, inputs: dict[str, list[dict]]) -> list[dict]:
    from stages import contrast

    return contrast.candidates(item, inputs.get("distorted", []))


KINDS: dict[str, Callable[[dict, dict[str, list[dict]]], list[dict]]] = {
    "text": text_pairs, "image": image_pairs, "contrast": contrast_pairs, "corrected": corrected_pairs}
READS = {"text": ("given", "hallucinated"), "image": ("sampled",), "contrast": ("distorted",),
         "corrected": ("corrected", "sampled")}
DEFAULT_KINDS = ("text", "image")


def candidates(item: dict, inputs: dict[str, list[dict]], kinds: tuple[str, ...] = DEFAULT_KINDS) -> list[dict]:
    """Every (chosen, rejected) candidate of one item for the given kinds, in KINDS order, with its pair id."""
    out = [c for k in KINDS if k in kinds for c in KINDS[k](item, inputs)]
    for c in out:
        c["id"] = pair_id(c["item_id"], c["kind"], c["variant"], c["rejected"])
    return out

"""Conversation layouts: LLaVA (JSON / JSONL / Parquet), POVID (+ `rejected_conversations`), ShareGPT preference.

- LLaVA: `{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}`. Each (human, gpt) pair of
  a multi-turn conversation is one record (`turn` = its index); `<image>` tags are removed from the
  prompt; a list in `image` (LLaVA-interleave, MIA-DPO) makes a multi-image item. A record without
  `image` is skipped as `text_only` (LLaVA-1.5's mix has ~40K of them); a human turn without an answer
  is skipped as `no_answer`; an empty answer is kept with `has_answer = false`.
- POVID: LLaVA records with `rejected_conversations`: the gpt turn t of it is turn t's rejected answer.
- ShareGPT preference (LLaMA-Factory, what `povid export --format sharegpt` writes): `conversations` (the
  human turn), `chosen` and `rejected` ({from, value}), `images` (paths).
"""

from __future__ import annotations

from typing import Iterator

from povid_cli.ingest.readers.layouts import Ctx
from povid_cli.ingest.record import Record, clean_prompt, infer_task


def _text(value) -> str:
    if isinstance(value, list):  # OpenAI-style content parts
        return " ".join(p.get("text") or "" for p in value if isinstance(p, dict))
    return value if isinstance(value, str) else ""


def turns(conv) -> list[tuple[str, str | None]]:
    """(human, gpt) per turn; gpt None for a trailing human turn without an answer."""
    out: list = []
    pending = None
    for msg in conv if isinstance(conv, list) else []:
        if not isinstance(msg, dict):
            continue
        who = (msg.get("from") or msg.get("role") or "").lower()
        val = _text(msg.get("value", msg.get("content", "")))
        if who in ("human", "user"):
            if pending is not None:
                out.append((pending, None))
            pending = val
        elif who in ("gpt", "assistant") and pending is not None:
            out.append((pending, val))
            pending = None
    if pending is not None:
        out.append((pending, None))
    return out


def _objects(row: dict):
    objs = row.get("objects")
    return [str(o) for o in objs] if isinstance(objs, list) else None


def _boxes(row: dict):
    boxes = row.get("boxes")
    if not isinstance(boxes, list):
        return None
    return [{"label": str(b.get("label")), "bbox": [float(v) for v in b["bbox"]]} for b in boxes
            if isinstance(b, dict) and isinstance(b.get("bbox"), (list, tuple)) and len(b["bbox"]) == 4]


def records(row, i: int, ctx: Ctx) -> Iterator[Record]:
    """LLaVA and POVID records."""
    if not isinstance(row, dict):
        yield ctx.record(i).fail("record is not a JSON object")
        return
    sid = row.get("id", i)
    convo = turns(row.get("conversations"))
    if not convo:
        yield ctx.record(sid, skip="no_answer")
        return
    rejected = turns(row.get("rejected_conversations"))
    image = row.get("image", row.get("images"))
    try:
        refs, names = ctx.images(image)
        err = None
    except ValueError as e:
        refs, names, err = [], [], str(e)
    for t, (human, gpt) in enumerate(convo):
        rec = ctx.record(sid, turn=t)
        if err:
            yield rec.fail(err, "bad_path")
            continue
        if not refs:
            rec.skip = "text_only"
            yield rec
            continue
        if gpt is None:
            rec.skip = "no_answer"
            yield rec
            continue
        prompt = clean_prompt(human)
        chosen = gpt.strip()
        rej = rejected[t][1] if t < len(rejected) and rejected[t][1] is not None else None
        rec.images, rec.image_names, rec.prompt, rec.chosen, rec.has_answer = refs, names, prompt, chosen, bool(chosen)
        rec.rejected = [(rej.strip(), None)] if rej and rej.strip() else []
        rec.task = row.get("task") or infer_task(prompt, chosen)
        rec.objects, rec.boxes = _objects(row), _boxes(row)
        yield rec


def sharegpt(row, i: int, ctx: Ctx) -> Iterator[Record]:
    if not isinstance(row, dict):
        yield ctx.record(i).fail("record is not a JSON object")
        return
    rec = ctx.record(row.get("id", i))
    humans = [h for h, _ in turns(row.get("conversations"))]
    chosen = _text((row.get("chosen") or {}).get("value") if isinstance(row.get("chosen"), dict) else row.get("chosen"))
    rej = row.get("rejected")
    rej = _text(rej.get("value") if isinstance(rej, dict) else rej).strip()
    try:
        rec.images, rec.image_names = ctx.images(row.get("images", row.get("image")))
    except ValueError as e:
        yield rec.fail(str(e), "bad_path")
        return
    if not rec.images:
        rec.skip = "text_only"
    elif not humans:
        rec.skip = "no_answer"
    else:
        rec.prompt, rec.chosen = clean_prompt(humans[-1]), chosen.strip()
        rec.has_answer = bool(rec.chosen)
        rec.rejected = [(rej, None)] if rej else []
        rec.task = row.get("task") or infer_task(rec.prompt, rec.chosen)
        rec.objects, rec.boxes = _objects(row), _boxes(row)
    yield rec


__all__ = ["records", "sharegpt", "turns"]

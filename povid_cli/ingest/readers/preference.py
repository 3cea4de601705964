"""Preference tables: TRL (explicit or implicit prompt), RLAIF-V, mDPO, HA-DPO, VLFeedback, OPA-DPO, `--map`.

Every row gives one record per chosen answer, with all its rejected answers as given pairs:
- TRL / RLAIF-V / mDPO / prompt + answer (`table`): the prompt is `prompt` (or `question`, `query`), as a
  string or messages (the last user turn), with any chat template and `<image>` tags removed; with no
  prompt column (TRL's implicit prompt) it is the user turn inside `chosen`. `chosen` / `rejected` are
  strings or assistant messages; lists of strings are zipped as HA-DPO's (below).
- HA-DPO (`ha_dpo`): `chosen` and `rejected` lists zipped into pairs (an extra rejected answer pairs with
  the last chosen one; an extra chosen answer is an item without a given pair); the image is
  `<image_id>.jpg` under the image root (or its `VG_100K` / `VG_100K_2` folders, Visual Genome's layout);
  the prompt is `question`, else --prompt.
- VLFeedback (`vlfeedback`): each completion's mean rating over the aspects that have a number
  (Helpfulness, Visual Faithfulness, Ethical Considerations); `--binarize best-worst`: chosen = the highest
  mean, rejected = the lowest; `all-pairs`: every completion is chosen against each one rated strictly
  lower. A row where every rated completion ties (or fewer than two are rated) gives no pair: skipped
  as `no_pair`.
- OPA-DPO (`opa_dpo`): rejected = `original_generate_response` (the model's own answer), chosen =
  `AI_pseudo_response` (its correction) and, as a second item, `standard_response` (the reference).
"""

from __future__ import annotations

from typing import Iterator

from povid_cli.ingest.readers.layouts import ID_COLUMNS, IMAGE_COLUMNS, PROMPT_COLUMNS, Ctx, first
from povid_cli.ingest.readers.llava import _boxes, _objects
from povid_cli.ingest.readers.tables import Cells
from povid_cli.ingest.record import Record, clean_prompt, infer_task


def message_text(value, role: str, last: bool = False) -> str:
    """A plain string, or the text of `role`'s messages ([{role, content: str | [{type, text}]}])."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    texts = []
    for m in value if isinstance(value, list) else [value]:
        if not isinstance(m, dict) or m.get("role", role) != role:
            continue
        c = m.get("content", m.get("value"))
        if isinstance(c, str):
            texts.append(c)
        elif isinstance(c, list):
            texts.append("\n".join(p.get("text") or "" for p in c if isinstance(p, dict) and p.get("type") == "text"))
    texts = [t for t in texts if t]
    return (texts[-1] if texts else "") if last else "\n".join(texts)


def _answers(value) -> list[str]:
    """chosen / rejected as a list of answers (one, or HA-DPO's several)."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    text = message_text(value, "assistant").strip()
    return [text] if value is not None else []


def _zip(chosen: list[str], rejected: list[str]) -> list[tuple[str, list[str]]]:
    if len(chosen) <= 1:
        return [(chosen[0] if chosen else "", rejected)]
    out = [(c, [rejected[i]] if i < len(rejected) else []) for i, c in enumerate(chosen)]
    out[-1][1].extend(rejected[len(chosen):])
    return out


def _image_value(row: dict):
    for col in IMAGE_COLUMNS:
        v = row.get(col)
        if v is None or (isinstance(v, Cells) and not v):
            continue
        return {"bytes": v} if col == "image_bytes" and isinstance(v, str) else v
    return None


def _emit(ctx: Ctx, row: dict, sid, prompt: str, pairs, images, model=None) -> Iterator[Record]:
    """One record per (chosen, [rejected]) of a row that shares its images and prompt."""
    for t, (chosen, rejected) in enumerate(pairs):
        rec = ctx.record(sid, turn=t)
        if isinstance(images, Exception):
            yield rec.fail(str(images), "bad_path")
            continue
        refs, names = images
        if not refs:
            rec.skip = "text_only"
            yield rec
            continue
        rec.images, rec.image_names, rec.prompt, rec.chosen = refs, names, prompt, chosen
        rec.has_answer = bool(chosen)
        rec.rejected = [(r, m) for r, m in (x if isinstance(x, tuple) else (x, model) for x in rejected) if r]
        rec.task = row.get("task") if isinstance(row.get("task"), str) else infer_task(prompt, chosen)
        rec.objects, rec.boxes = _objects(row), _boxes(row)
        yield rec


def _images(ctx: Ctx, value):
    try:
        return ctx.images(value)
    except ValueError as e:
        return e


def table(row, i: int, ctx: Ctx) -> Iterator[Record]:
    if not isinstance(row, dict):
        yield ctx.record(i).fail("record is not a JSON object")
        return
    sid = first(row, ID_COLUMNS)
    sid = i if sid is None else sid
    prompt_value = first(row, PROMPT_COLUMNS)
    chosen_value = row.get("chosen")
    if prompt_value is None and isinstance(chosen_value, list):  # TRL's implicit prompt
        prompt_value = [m for m in chosen_value if isinstance(m, dict) and m.get("role") == "user"]
    prompt = clean_prompt(message_text(prompt_value, "user", last=True))
    chosen = _answers(chosen_value)
    rejected = _answers(row.get("rejected", row.get("reject")))
    if not chosen:
        yield ctx.record(sid, skip="no_answer")
        return
    yield from _emit(ctx, row, sid, prompt, _zip(chosen, rejected), _images(ctx, _image_value(row)))


def ha_dpo(row, i: int, ctx: Ctx) -> Iterator[Record]:
    if not isinstance(row, dict):
        yield ctx.record(i).fail("record is not a JSON object")
        return
    sid = row.get("image_id", i)
    prompt = clean_prompt(row["question"]) if isinstance(row.get("question"), str) else ctx.prompt
    chosen = _answers(row.get("chosen"))
    rejected = _answers(row.get("rejected", row.get("reject")))
    if not chosen:
        yield ctx.record(sid, skip="no_answer")
        return
    try:
        images = ctx.image_by_id(sid)
    except ValueError as e:
        images = e
    yield from _emit(ctx, row, sid, prompt, _zip(chosen, rejected), images)


def _rating(completion: dict) -> float | None:
    notes = completion.get("annotations") or {}
    values = []
    for aspect in notes.values() if isinstance(notes, dict) else []:
        try:
            values.append(float((aspect or {}).get("Rating")))
        except (TypeError, ValueError):
            continue  # "N/A" and missing ratings do not count
    return sum(values) / len(values) if values else None


def _completions(value) -> list[dict]:
    if isinstance(value, dict):  # `datasets` stores a Sequence of dicts as a dict of lists
        keys = list(value)
        n = max((len(value[k] or []) for k in keys), default=0)
        return [{k: (value[k] or [None] * n)[j] for k in keys} for j in range(n)]
    return [c for c in value or [] if isinstance(c, dict)]


def vlfeedback(row, i: int, ctx: Ctx) -> Iterator[Record]:
    if not isinstance(row, dict):
        yield ctx.record(i).fail("record is not a JSON object")
        return
    sid = row.get("id", i)
    prompt = clean_prompt(message_text(row.get("prompt"), "user", last=True))
    rated = [(r, (c.get("response") or "").strip(), c.get("model")) for c in _completions(row.get("completions"))
             if (r := _rating(c)) is not None]
    if len(rated) < 2 or max(r for r, _, _ in rated) == min(r for r, _, _ in rated):
        yield ctx.record(sid, skip="no_pair")
        return
    if ctx.binarize == "all-pairs":
        pairs = [(a, [(b, mb) for rb, b, mb in rated if rb < ra]) for ra, a, _ in rated]
        pairs = [p for p in pairs if p[1]]
    else:
        best = max(rated, key=lambda x: x[0])  # the first of the highest, the first of the lowest
        worst = min(rated, key=lambda x: x[0])
        pairs = [(best[1], [(worst[1], worst[2])])]
    yield from _emit(ctx, row, sid, prompt, pairs, _images(ctx, _image_value(row)))


def opa_dpo(row, i: int, ctx: Ctx) -> Iterator[Record]:
    if not isinstance(row, dict):
        yield ctx.record(i).fail("record is not a JSON object")
        return
    sid = first(row, ID_COLUMNS)
    sid = i if sid is None else sid
    prompt = clean_prompt(message_text(row.get("queries", row.get("query")), "user", last=True))
    own = (row.get("original_generate_response") or "").strip()
    chosen = [(row.get(c) or "").strip() for c in ("AI_pseudo_response", "standard_response")]
    chosen = [c for j, c in enumerate(chosen) if c and c not in chosen[:j]]
    if not chosen:
        yield ctx.record(sid, skip="no_answer")
        return
    yield from _emit(ctx, row, sid, prompt, [(c, [own]) for c in chosen], _images(ctx, _image_value(row)))


__all__ = ["table", "ha_dpo", "vlfeedback", "opa_dpo", "message_text"]

"""The answers page of `povid eval --html`: one self-contained HTML file (images inlined, no script, no network).

`render(results, rows, thumbs)` is pure: `results` is results.json, `rows` the per-answer records
(results.answers.jsonl), `thumbs` file name -> JPEG bytes. Per image: its thumbnail, the CHAIR
description with every object mention marked (red: hallucinated, green: in the ground truth), the
ground-truth objects, and its POPE questions with the answer read from each. Everything that comes
from the model or the annotations is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from stages.chair import object_mentions

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")  # the word pattern of stages/textsim.words

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.card{display:flex;gap:16px;border-top:1px solid #ddd;padding:12px 0}.card img{max-width:256px;align-self:flex-start}
.card .body{flex:1}mark.h{background:#f8c4c4;color:#900}mark.g{background:#c9efc9}
.small{color:#666;font-size:12px}.bad{color:#b00}.ok{color:#070}.err{color:#b00;font-weight:bold}
"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def marked(text: str, truth: set[str]) -> str:
    """`text` escaped, with each object mention wrapped in <mark> (class h: hallucinated, g: ground truth)."""
    lower = text.lower()
    if len(lower) != len(text):  # case folding moved the offsets (rare scripts): show it unmarked
        return esc(text)
    spans = [m.span() for m in _WORD.finditer(lower)]
    out, pos = [], 0
    for first, end, cat in object_mentions(text):
        start, stop = spans[first][0], spans[end - 1][1]
        cls, tip = ("g", "in the image") if cat in truth else ("h", "hallucinated")
        out.append(esc(text[pos:start]))
        out.append(f'<mark class="{cls}" title="{esc(cat)}: {tip}">{esc(text[start:stop])}</mark>')
        pos = stop
    out.append(esc(text[pos:]))
    return "".join(out)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _figures(res: dict) -> str:
    parts = []
    c = res.get("chair")
    if c:
        parts.append("<table><tr><th>CHAIR_s</th><th>CHAIR_i</th><th>recall</th><th>avg_len</th><th>n</th></tr>"
                     f"<tr><td>{_pct(c.get('chair_s'))}</td><td>{_pct(c.get('chair_i'))}</td>"
                     f"<td>{_pct(c.get('recall'))}</td><td>{c.get('avg_len', 0):.1f}</td><td>{esc(c.get('n'))}</td></tr></table>")
    p = res.get("pope")
    if p:
        head = "".join(f"<th>{h}</th>" for h in ("accuracy", "precision", "recall", "F1", "yes-ratio", "n", "unparsed"))
        body = "".join(
            f"<tr><td class=l>{esc(s)}</td><td>{_pct(m.get('accuracy'))}</td><td>{_pct(m.get('precision'))}</td>"
            f"<td>{_pct(m.get('recall'))}</td><td>{_pct(m.get('f1'))}</td><td>{_pct(m.get('yes_ratio'))}</td>"
            f"<td>{esc(m.get('n'))}</td><td>{esc(m.get('unparsed'))}</td></tr>" for s, m in p.items())
        parts.append(f"<table><tr><th class=l>POPE</th>{head}</tr>{body}</table>")
    return "".join(parts)


def render(results: dict, rows: list[dict], thumbs: dict[str, bytes]) -> str:
    """The whole page (see the module docstring). Rates are shown in percent."""
    title = f"povid eval: {results.get('model')}" + (f" + {results.get('adapter')}" if results.get("adapter") else "")
    h = [f"<!doctype html><html><head><meta charset=utf-8><title>{esc(title)}</title><style>{CSS}</style></head><body>",
         f"<h1>{esc(title)}</h1>",
         f"<p class=small>backend {esc(results.get('backend'))} · {esc(results.get('n_images'))} images · "
         f"{esc(results.get('failed', 0))} failed answers · rates in percent</p>", _figures(results)]
    for name, sub in (results.get("subsets") or {}).items():
        h.append(f"<h2>subset {esc(name)} ({esc(sub.get('n_images'))} images)</h2>{_figures(sub)}")
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(str(r.get("file_name")), []).append(r)
    h.append("<h2>Answers</h2><p class=small><mark class=h>hallucinated object</mark> "
             "<mark class=g>object in the image</mark></p>")
    for fname, rs in by_image.items():
        img = ""
        if fname in thumbs:
            img = f'<img alt="{esc(fname)}" src="data:image/jpeg;base64,{base64.b64encode(thumbs[fname]).decode()}">'
        body = [f"<div class=small>{esc(fname)} · image {esc(rs[0].get('image_id'))}</div>"]
        for r in (r for r in rs if r["benchmark"] == "chair"):
            if "error" in r:
                body.append(f"<p class=err>failed: {esc(r['error'])}</p>")
                continue
            truth = set(r.get("truth") or [])
            body.append(f"<p>{marked(r.get('answer') or '', truth)}</p>"
                        f"<div class=small>ground truth: {esc(', '.join(sorted(truth)) or '-')} · "
                        f"hallucinated: <span class=bad>{esc(', '.join(r.get('hallucinated') or []))}</span>"
                        f"{'' if r.get('hallucinated') else 'none'}</div>")
        pope = [r for r in rs if r["benchmark"] == "pope"]
        if pope:
            body.append("<table><tr><th class=l>split</th><th class=l>question</th><th>label</th>"
                        "<th class=l>answer</th><th>read as</th></tr>")
            for r in pope:
                if "error" in r:
                    read = f"<span class=err>failed: {esc(r['error'])}</span>"
                else:
                    ok = r["pred"] == r["label"]
                    read = (f"<span class={'ok' if ok else 'bad'}>{esc(r['pred'])}</span>"
                            + ("" if r.get("parsed") else " <span class=small>(unparsed)</span>"))
                body.append(f"<tr><td class=l>{esc(r.get('split'))}</td><td class=l>{esc(r.get('prompt'))}</td>"
                            f"<td>{esc(r.get('label'))}</td><td class=l>{esc(r.get('answer'))}</td><td>{read}</td></tr>")
            body.append("</table>")
        h.append(f"<div class=card>{img}<div class=body>{''.join(body)}</div></div>")
    h.append("</body></html>")
    return "\n".join(h)


def thumbnail(data: bytes, size: int = 256) -> bytes:
    """A JPEG at most `size` pixels on its long side, so that a page of 500 images stays small."""
    import io

    from povid_cli.core.images import decode_rgb

    im = decode_rgb(data)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def write_page(path: str, results: dict, rows: list[dict], folder=None, size: int = 256) -> None:
    """Render and write the page atomically; `folder` (a core.fs Location) holds the images to inline."""
    from povid_cli.core.fs import resolve

    thumbs: dict[str, bytes] = {}
    if folder is not None:
        for fname in dict.fromkeys(str(r.get("file_name")) for r in rows):
            loc = folder.join(fname)
            try:
                thumbs[fname] = thumbnail(loc.read_bytes(), size)
            except Exception:  # noqa: BLE001 - a missing or unreadable image: the page shows the text only
                continue
    resolve(path).write_bytes_atomic(render(results, rows, thumbs).encode("utf-8"))


def page_from_results(results_path: str, path: str) -> None:
    """The page of a finished run: results.json, its answers file and its images folder (when still there)."""
    import json

    from povid_cli.core.errors import PovidError
    from povid_cli.core.fs import resolve
    from povid_cli.eval.compare import load_results

    results = load_results(results_path)
    cfg = results.get("config") or {}
    answers = resolve(cfg.get("answers_file") or "")
    if not cfg.get("answers_file") or not answers.exists():
        stem = results_path[: -len(".json")] if results_path.endswith(".json") else results_path
        answers = resolve(stem + ".answers.jsonl")
    if not answers.exists():
        raise PovidError(f"the answers file of {results_path} is gone (looked for {answers.url})")
    rows = [json.loads(line) for line in answers.read_bytes().decode("utf-8").splitlines() if line.strip()]
    folder = resolve(cfg["images"]) if cfg.get("images") else None
    write_page(path, results, rows, folder if folder is not None and folder.is_dir() else None)

"""`report`: pair rows -> one self-contained HTML page (images inlined, no network, plain JS).

`render(summary, rows, clean, distorted)` is pure: it takes the rows to show (kept pairs and dropped
rows, each with `drop_reason` None for kept ones), thumbnails keyed by item id and by (item id,
variant), and a `Summary` of the whole dataset, and returns the page. Each distinct image is inlined
once, as a CSS class with a data URL, however many pairs show it. All user text is HTML-escaped.

The page reads its filters from the URL fragment, e.g. `report.html#kind=text&status=dropped&reason=duplicate`,
and writes them back there when the selects change, so a filtered view can be shared as a link.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from dataclasses import dataclass, field

from stages.textsim import display_diff


@dataclass
class Summary:
    dataset: str
    items: int = 0
    pairs_by_kind: dict[str, int] = field(default_factory=dict)
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    usage: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> requests, tokens, cost_usd
    generated: str = ""


def thumbnail(data: bytes, size: int = 256, quality: int = 80) -> bytes:
    """A JPEG at most `size` pixels on its long side, so that the page stays small."""
    from PIL import Image

    from povid_cli.core.images import decode_rgb

    im = decode_rgb(data)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def select(rows: list[dict], limit: int | None, key: str) -> list[dict]:
    """At most `limit` rows, taken round-robin over the values of `key` so that every group shows."""
    if limit is None or len(rows) <= limit:
        return rows
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r.get(key)), []).append(r)
    out: list[dict] = []
    queues = [list(g) for g in groups.values()]
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    order = {id(r): i for i, r in enumerate(rows)}
    return sorted(out, key=lambda r: order[id(r)])


def _e(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _diff_html(chosen: str, rejected: str) -> tuple[str, str]:
    a, b = display_diff(chosen or "", rejected or "")
    ha = "".join(f"<del>{_e(t)}</del>" if ch else _e(t) for t, ch in a)
    hb = "".join(f"<mark>{_e(t)}</mark>" if ch else _e(t) for t, ch in b)
    return ha, hb


class _Images:
    """Distinct images as CSS classes: `.im-<hash>` with a data URL background and the aspect ratio."""

    def __init__(self):
        self.css: dict[str, str] = {}

    def cls(self, data: bytes | None) -> str | None:
        if not data:
            return None
        k = "im-" + hashlib.sha256(data).hexdigest()[:12]
        if k not in self.css:
            try:
                from PIL import Image

                w, h = Image.open(io.BytesIO(data)).size
            except Exception:  # noqa: BLE001 - an unreadable thumbnail shows as an empty box
                w, h = 4, 3
            mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
            url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
            self.css[k] = f".{k}{{background-image:url({url});aspect-ratio:{w}/{h}}}"
        return k


def _figure(images: _Images, data: bytes | None, label: str) -> str:
    k = images.cls(data)
    if k is None:
        return ""
    return (f'<figure><div class="img {k}" role="img" aria-label="{_e(label)}"></div>'
            f"<figcaption>{_e(label)}</figcaption></figure>")


def _chips(r: dict) -> str:
    chips = [f'<span class="chip kind">{_e(r.get("kind"))}</span>']
    if r.get("variant"):
        chips.append(f'<span class="chip">variant {_e(r["variant"])}</span>')
    if r.get("drop_reason"):
        chips.append(f'<span class="chip reason">{_e(r["drop_reason"])}</span>')
    else:
        chips.append('<span class="chip kept">kept</span>')
    if r.get("similarity") is not None:
        chips.append(f'<span class="chip">similarity {float(r["similarity"]):.2f}</span>')
    if r.get("n_edits") is not None:
        chips.append(f'<span class="chip">{int(r["n_edits"])} edit(s)</span>')
    for o in r.get("hallucinated_objects") or []:
        chips.append(f'<span class="chip obj">+{_e(o)}</span>')
    # On free-form image pairs nearly every edit touches some attribute word: show them for text pairs only.
    for a in (r.get("changed_attributes") or [])[:6] if r.get("kind") == "text" else []:
        chips.append(f'<span class="chip attr">{_e(a)}</span>')
    if r.get("logprob") is not None:
        chips.append(f'<span class="chip">logprob {float(r["logprob"]):.2f}</span>')
    if r.get("judge_verdict"):
        chips.append(f'<span class="chip" title="{_e(r.get("judge_reason"))}">judge {_e(r["judge_verdict"])}</span>')
    if r.get("rejected_source"):
        chips.append(f'<span class="chip src">{_e(r["rejected_source"])}</span>')
    return "".join(chips)


def _card(r: dict, images: _Images, clean: dict, distorted: dict) -> str:
    ha, hb = _diff_html(r.get("chosen") or "", r.get("rejected") or "")
    status = "dropped" if r.get("drop_reason") else "kept"
    figs = _figure(images, clean.get(r.get("item_id")), "clean image")
    if r.get("variant"):
        figs += _figure(images, distorted.get((r.get("item_id"), r.get("variant"))), f"distorted ({r['variant']})")
    detail = f'<p class="detail">{_e(r.get("drop_detail"))}</p>' if r.get("drop_detail") else ""
    return (
        f'<article class="pair" data-kind="{_e(r.get("kind"))}" data-status="{status}" '
        f'data-reason="{_e(r.get("drop_reason") or "")}" data-pair="{_e(r.get("id"))}">'
        f'<div class="figs">{figs}</div><div class="body">'
        f'<div class="chips">{_chips(r)}</div>{detail}'
        f'<p class="prompt"><b>Prompt</b> {_e(r.get("prompt"))}</p>'
        f'<div class="cols"><div class="col chosen"><h3>Chosen</h3><p>{ha}</p></div>'
        f'<div class="col rejected"><h3>Rejected</h3><p>{hb}</p></div></div>'
        f'<p class="ids">pair {_e(r.get("id"))} · item {_e(r.get("item_id"))}</p>'
        f"</div></article>"
    )


def _bars(counts: dict[str, int], css: str) -> str:
    if not counts:
        return '<p class="muted">none</p>'
    top = max(counts.values()) or 1
    rows = []
    for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append(f'<div class="bar"><span class="bl">{_e(k)}</span><span class="bt"><span class="bf {css}" '
                    f'style="width:{100 * v / top:.1f}%"></span></span><span class="bv">{v}</span></div>')
    return "".join(rows)


def _usage_table(usage: dict[str, dict[str, float]]) -> str:
    cols = ["requests", "cached", "prompt_tokens", "completion_tokens", "cost_usd"]
    names = ["requests", "cached", "prompt tok.", "compl. tok.", "USD"]
    rows = [(s, u) for s, u in usage.items() if u and any(float(u.get(c, 0) or 0) for c in cols)]
    if not rows:
        return '<p class="muted">no API usage recorded</p>'
    head = "".join(f"<th>{n}</th>" for n in names)
    body = []
    total = {c: 0.0 for c in cols}
    for s, u in rows:
        cells = []
        for c in cols:
            v = float(u.get(c, 0) or 0)
            total[c] += v
            cells.append(f"<td>{v:,.4f}</td>" if c == "cost_usd" else f"<td>{int(v):,}</td>")
        body.append(f"<tr><th>{_e(s)}</th>{''.join(cells)}</tr>")
    tot = "".join(f"<td>{total[c]:,.4f}</td>" if c == "cost_usd" else f"<td>{int(total[c]):,}</td>" for c in cols)
    return (f'<table class="usage"><tr><th>stage</th>{head}</tr>{"".join(body)}'
            f'<tr class="total"><th>total</th>{tot}</tr></table>')


def render(summary: Summary, rows: list[dict], clean: dict[str, bytes], distorted: dict[tuple, bytes]) -> str:
    """The report page. `clean`/`distorted`: thumbnail bytes by item id / by (item id, variant)."""
    images = _Images()
    cards = "\n".join(_card(r, images, clean, distorted) for r in rows)
    kinds = sorted({str(r.get("kind")) for r in rows} | set(summary.pairs_by_kind))
    reasons = sorted({r["drop_reason"] for r in rows if r.get("drop_reason")} | set(summary.dropped_by_reason))
    n_pairs = sum(summary.pairs_by_kind.values())
    n_dropped = sum(summary.dropped_by_reason.values())
    kind_opts = "".join(f'<option value="{_e(k)}">{_e(k)}</option>' for k in kinds)
    reason_opts = "".join(f'<option value="{_e(k)}">{_e(k)}</option>' for k in reasons)
    return _PAGE.format(
        title=_e(f"povid report: {summary.dataset}"), dataset=_e(summary.dataset), generated=_e(summary.generated),
        items=summary.items, n_pairs=n_pairs, n_dropped=n_dropped,
        kept_share=f"{100 * n_pairs / (n_pairs + n_dropped):.0f}%" if n_pairs + n_dropped else "n/a",
        kind_bars=_bars(summary.pairs_by_kind, "k"), reason_bars=_bars(summary.dropped_by_reason, "r"),
        usage=_usage_table(summary.usage), kind_opts=kind_opts, reason_opts=reason_opts,
        n_rows=len(rows), cards=cards or '<p class="muted">no pairs yet: run `povid filter` first</p>',
        css=_CSS, image_css="\n".join(images.css.values()), js=_JS,
        meta=_e(json.dumps({"pairs": n_pairs, "dropped": n_dropped, "shown": len(rows)})),
    )


_CSS = """
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{padding:16px 24px;background:#1d2330;color:#fff}header h1{margin:0;font-size:20px}header p{margin:4px 0 0;color:#b8c0d0}
main{padding:16px 24px;max-width:1400px;margin:auto}.muted{color:#7a8394}
.summary{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:12px;margin-bottom:16px}
.card{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}.card h2{margin:0 0 8px;font-size:13px;text-transform:uppercase;color:#7a8394;letter-spacing:.04em}
.big{font-size:28px;font-weight:600}.big small{font-size:13px;color:#7a8394;font-weight:400}
.bar{display:grid;grid-template-columns:120px 1fr 48px;gap:8px;align-items:center;margin:3px 0}.bl{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bt{background:#eef0f4;border-radius:3px;height:12px}.bf{display:block;height:12px;border-radius:3px}.bf.k{background:#3b82f6}.bf.r{background:#f59e0b}.bv{text-align:right}
table.usage{border-collapse:collapse;width:100%;font-size:11px}table.usage td,table.usage th{padding:2px 6px;text-align:right}table.usage tr>th:first-child{text-align:left}.total{border-top:1px solid #ccd}
.controls{position:sticky;top:0;background:#f5f6f8;padding:8px 0;display:flex;gap:12px;align-items:center;z-index:2;flex-wrap:wrap}
select{font:inherit;padding:3px 6px}
.pair{display:grid;grid-template-columns:auto 1fr;gap:14px;background:#fff;border-radius:8px;padding:12px;margin:10px 0;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.pair[data-status=dropped]{border-left:4px solid #f59e0b}.pair[data-status=kept]{border-left:4px solid #22c55e}
.pair.hidden{display:none}
.figs{display:flex;gap:8px}figure{margin:0;width:180px}figure .img{width:180px;background-size:contain;background-repeat:no-repeat;background-position:center;background-color:#eef0f4;border-radius:4px}
figcaption{font-size:11px;color:#7a8394;text-align:center}
.chips{display:flex;flex-wrap:wrap;gap:4px}.chip{font-size:11px;background:#eef0f4;border-radius:10px;padding:1px 8px}
.chip.kind{background:#dbeafe}.chip.kept{background:#dcfce7}.chip.reason{background:#fde68a}.chip.obj{background:#fecaca}.chip.attr{background:#fee2e2}
.prompt{margin:8px 0}.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px}.col h3{margin:0 0 4px;font-size:12px;color:#7a8394;text-transform:uppercase}
.col p{margin:0;white-space:pre-wrap}mark{background:#fecaca;border-radius:2px}del{background:#dcfce7;text-decoration:none;border-bottom:2px solid #16a34a}
.legend{font-size:12px;color:#7a8394;margin-left:auto}.detail{margin:6px 0 0;color:#92400e;font-size:12px}.ids{margin:8px 0 0;font-size:11px;color:#a0a8b8}
@media(max-width:800px){.pair{grid-template-columns:1fr}.cols{grid-template-columns:1fr}}
"""

_JS = """
(function(){
  var sel = {kind: document.getElementById('f-kind'), status: document.getElementById('f-status'),
             reason: document.getElementById('f-reason')};
  var cards = Array.prototype.slice.call(document.querySelectorAll('article.pair'));
  function read(){
    var s = (location.hash || location.search || '').replace(/^[#?]/, '');
    s.split('&').forEach(function(kv){
      var p = kv.split('='), k = decodeURIComponent(p[0] || ''), v = decodeURIComponent(p[1] || '');
      if (sel[k] && Array.prototype.some.call(sel[k].options, function(o){ return o.value === v; })) sel[k].value = v;
    });
  }
  function apply(write){
    var kind = sel.kind.value, status = sel.status.value, reason = sel.reason.value, n = 0;
    if (reason) { status = 'dropped'; sel.status.value = 'dropped'; }
    cards.forEach(function(c){
      var ok = (!kind || c.dataset.kind === kind) && (!status || c.dataset.status === status) &&
               (!reason || c.dataset.reason === reason);
      c.classList.toggle('hidden', !ok);
      if (ok) n++;
    });
    document.getElementById('shown').textContent = n;
    document.body.setAttribute('data-shown', n);
    if (write) {
      var parts = [];
      ['kind', 'status', 'reason'].forEach(function(k){ if (sel[k].value) parts.push(k + '=' + encodeURIComponent(sel[k].value)); });
      history.replaceState(null, '', parts.length ? '#' + parts.join('&') : location.pathname);
    }
  }
  Object.keys(sel).forEach(function(k){ sel[k].addEventListener('change', function(){ apply(true); }); });
  window.addEventListener('hashchange', function(){ read(); apply(false); });
  read(); apply(false);
  document.body.setAttribute('data-ready', '1');
})();
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title><style>{css}
{image_css}</style></head>
<body data-meta="{meta}">
<header><h1>povid report</h1><p>{dataset} · generated {generated}</p></header>
<main>
<section class="summary">
<div class="card"><h2>Dataset</h2><div class="big">{items} <small>items</small></div>
<div class="big">{n_pairs} <small>pairs kept</small></div><div class="big">{n_dropped} <small>dropped ({kept_share} kept)</small></div></div>
<div class="card"><h2>Pairs per kind</h2>{kind_bars}</div>
<div class="card"><h2>Drop reasons</h2>{reason_bars}</div>
<div class="card"><h2>Token cost</h2><div style="overflow-x:auto">{usage}</div></div>
</section>
<div class="controls">
<label>Kind <select id="f-kind"><option value="">all</option>{kind_opts}</select></label>
<label>Status <select id="f-status"><option value="">all</option><option value="kept">kept</option><option value="dropped">dropped</option></select></label>
<label>Drop reason <select id="f-reason"><option value="">any</option>{reason_opts}</select></label>
<span>showing <b id="shown">{n_rows}</b> of {n_rows} rows</span>
<span class="legend"><del>chosen only</del> <mark>rejected only (hallucinated)</mark> · <span class="chip obj">+object</span> absent from the ground truth</span>
</div>
<section id="pairs">
{cards}
</section>
</main>
<script>{js}</script>
</body></html>
"""

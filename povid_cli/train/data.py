"""What `povid train` feeds to TRL: pair rows read from a povid dataset or a TRL Parquet export, checked
against the model's token budget, split into train / eval per kind.

Input (either):
- a povid dataset folder with `pairs` (schema `PAIRS`: prompt, chosen, rejected as strings, `image`, `kind`);
- TRL Parquet (a file or a folder of them, e.g. `povid export --format trl`): `images` (list of image structs)
  or `image`, `prompt` / `chosen` / `rejected` in conversational form (or plain strings), optional `kind`.

Output rows (what `trl.DPOTrainer` takes for VLMs; a multi-image item's row has all its images):
`images` [{bytes, path}], `prompt` [{role: user, content: str}], `chosen` / `rejected` [{role: assistant,
content: str}], `kind`, `id`, `item_id`, and `weight` (float) with `--weight-column`. TRL puts the image
placeholder into the first user turn itself. `read_pairs(path, extra)` also keeps the named columns (a
curriculum score) as they are. A `contrast` pair also has `rejected_images` (its rejected side's images: pairs'
`rejected_image` + `rejected_extra_images`, TRL Parquet's `rejected_images`), read by povid's collator
(povid_cli/train/collator.py); `--loss mdpo` adds `cond_images` (`attach_conditional_images`).

Pair weights (`--weight-column COL`): a column of `pairs`; `weight` on a povid dataset whose pairs have
`weight_score` (filter --weight-by) is that score scaled to [0.2, 1] over all its pairs, as `export` does
(stages/weights.py); a column of TRL Parquet; or a column of `items` (an ingested one), joined on item_id.
Weights must be finite and >= 0 (0: the pair gives no gradient).
"""

from __future__ import annotations

import io
import logging
import math
import random
from dataclasses import dataclass, field

import pyarrow as pa

from povid_cli.core.errors import PovidError
from povid_cli.core.schemas import item_images

log = logging.getLogger("povid.train")

KINDS = ("text", "image", "contrast", "all")
IMAGE_KEYS = ("images", "rejected_images", "cond_images")  # a row's image lists (the first is always there)
MIN_IMAGE_SIDE = 28  # the smallest patch grid any supported vision tower accepts (2 x 14 px)


# -- reading ---------------------------------------------------------------------------------------
def read_pairs(path: str, extra: tuple[str, ...] = (), weight_column: str | None = None) -> list[dict]:
    """Pair rows (see module docstring) from a povid dataset or TRL Parquet file/folder; `extra` columns are
    kept where the data has them, `weight_column` becomes each row's `weight` (or a one-line error)."""
    from povid_cli.core.fs import resolve

    root = resolve(path)
    if not root.exists():
        raise PovidError(f"{root.url} does not exist")
    if root.is_dir() and root.join("manifest.json").exists():
        from povid_cli.core.store import Dataset

        from povid_cli.core.items import attach_images
        from stages import contrast

        ds = Dataset.open(path)
        table = ds.read_all("pairs")
        if table is None:
            raise PovidError(f"{root.url} has no pairs yet: run `povid filter {path}` (or `povid synth`) first")
        raw = [r for k in ds.committed_shards("pairs")  # the images live in items (stored once)
               for r in attach_images(ds, k, ds.read_shard("pairs", k).to_pylist(), rebuild=contrast.rejected_images)]
        rows = [_keep(_from_povid(r), r, extra) for r in raw]
        if weight_column:
            _set_weights(rows, _povid_weights(ds, table, raw, weight_column), weight_column, root.url)
        return rows
    files = _parquet_files(root)
    if not files:
        raise PovidError(f"{root.url} is neither a povid dataset (no manifest.json) nor TRL Parquet (no .parquet files)")
    tables = [f.read_parquet() for f in files]
    table = pa.concat_tables(tables, promote_options="default")
    names = set(table.column_names)
    missing = {"prompt", "chosen", "rejected"} - names
    if missing or not names & {"images", "image"}:
        need = sorted(missing) + ([] if names & {"images", "image"} else ["images"])
        raise PovidError(f"{files[0].url} is not TRL preference Parquet: missing column(s) {', '.join(need)}")
    raw = table.to_pylist()
    rows = [_keep(_from_trl(r), r, extra) for r in raw]
    if weight_column:
        if weight_column not in names:
            raise PovidError(f"--weight-column {weight_column}: {files[0].url} has no such column "
                             f"(it has: {', '.join(sorted(names))})")
        _set_weights(rows, [r[weight_column] for r in raw], weight_column, root.url)
    return rows


def _keep(row: dict, raw: dict, extra: tuple[str, ...]) -> dict:
    for col in extra:
        if col in raw and col not in row:
            row[col] = raw[col]
    return row


def _povid_weights(ds, table, raw: list[dict], col: str) -> list:
    """COL from `pairs`; `weight` from filter's `weight_score`; else COL from `items`, by item_id."""
    if col in table.column_names:
        return [r[col] for r in raw]
    if col == "weight" and "weight_score" in table.column_names:
        from stages.weights import weights

        scaled, b = weights([r["weight_score"] for r in raw])
        if b is not None:
            log.info("weights: weight_score %g..%g scaled to [0.2, 1] over %d pairs", b[0], b[1], len(raw))
            return scaled
    item_shards = ds.committed_shards("items") if ds.has("items") else []
    item_cols = set(ds.shard("items", item_shards[0]).parquet_schema().names) if item_shards else set()
    if col not in item_cols:
        raise PovidError(f"--weight-column {col}: neither the pairs nor the items of {ds.root.url} have that column"
                         + ("" if col != "weight" else
                            " (`povid filter --weight-by NAME` stores the scores the weights are scaled from)"))
    by_item = dict(zip(*ds.read_all("items", columns=["id", col]).to_pydict().values()))
    return [by_item.get(r["item_id"]) for r in raw]


def _set_weights(rows: list[dict], values: list, col: str, where: str) -> None:
    bad = {"missing": 0, "invalid": 0}
    for row, v in zip(rows, values):
        if v is None:
            bad["missing"] += 1
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            bad["invalid"] += 1
        else:
            row["weight"] = float(v)
    if bad["missing"] or bad["invalid"]:
        what = ", ".join(f"{n} {k}" for k, n in bad.items() if n)
        raise PovidError(f"--weight-column {col}: {what} weight(s) of {len(rows)} pairs in {where}; weights must "
                         "be numbers >= 0 (0: the pair gives no gradient)")


def _parquet_files(root) -> list:
    if not root.is_dir():
        return [root] if root.path.endswith(".parquet") else []
    out = []
    for name in root.listdir():
        loc = root.join(name)
        if name.endswith(".parquet") and not name.startswith("."):
            out.append(loc)
        elif loc.is_dir() and not name.startswith("."):
            out.extend(_parquet_files(loc))
    return out


def _text(content) -> str:
    """Message content (a string or a list of {type, text} parts) as plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if p.get("type") == "text")


def _messages(value, role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m["role"], "content": _text(m.get("content"))} for m in value]


def _image(img) -> dict:
    if isinstance(img, dict):
        data = img.get("bytes")
        if data is None and img.get("path"):
            with open(img["path"], "rb") as f:
                data = f.read()
        return {"bytes": data, "path": img.get("path")}
    raise PovidError(f"unsupported image value {type(img).__name__}")


def _row(r: dict, images: list, rejected_images: list | None) -> dict:
    row = {"images": [_image(i) for i in images], "prompt": _messages(r["prompt"], "user"),
           "chosen": _messages(r["chosen"], "assistant"), "rejected": _messages(r["rejected"], "assistant"),
           "kind": r.get("kind") or "text", "id": r.get("id"), "item_id": r.get("item_id")}
    if rejected_images:
        if len(rejected_images) != len(row["images"]):
            raise PovidError(f"pair {r.get('id')}: {len(row['images'])} image(s) but {len(rejected_images)} rejected "
                             "image(s)")
        row["rejected_images"] = [_image(i) for i in rejected_images]
    return row


def _from_povid(r: dict) -> dict:
    rejected = [r["rejected_image"], *(r.get("rejected_extra_images") or [])] if r.get("rejected_image") else None
    return _row(r, item_images(r), rejected)


def _from_trl(r: dict) -> dict:
    imgs = r.get("images")
    if imgs is None and r.get("image") is not None:
        imgs = [r["image"]]
    return _row(r, imgs or [], r.get("rejected_images"))


def attach_conditional_images(rows: list[dict]) -> int:
    """`--loss mdpo`: give every row that is not itself a contrast pair the rejected images of a contrast pair of
    its item (its corrupted image m'; one of them, picked by the row's id when there are several) as
    `cond_images`. Returns how many rows got one; the others get mDPO's random crop in the collator."""
    import hashlib

    by_item: dict[str, list[list]] = {}
    for r in rows:
        if r.get("rejected_images") and r.get("item_id"):
            by_item.setdefault(r["item_id"], []).append(r["rejected_images"])
    n = 0
    for r in rows:
        options = by_item.get(r.get("item_id")) if not r.get("rejected_images") else None
        if options:
            pick = options[int(hashlib.sha256(str(r.get("id")).encode()).hexdigest(), 16) % len(options)]
            if len(pick) == len(r["images"]):
                r["cond_images"] = pick
                n += 1
    return n


def select_kind(rows: list[dict], kind: str | tuple[str, ...], source: str) -> list[dict]:
    """The rows of `kind` ("all", one kind, or a tuple of kinds); a one-line error when there are none."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    for k in kinds:
        if k not in KINDS:
            raise PovidError(f"unknown kind {k!r}; choose one of {', '.join(KINDS)}")
    out = rows if "all" in kinds else [r for r in rows if r["kind"] in kinds]
    if not out:
        have = sorted({r["kind"] for r in rows})
        what = "" if "all" in kinds else " or ".join(kinds) + " "
        raise PovidError(f"{source} has no {what}pairs" + (f" (it has: {', '.join(have)})" if have else ""))
    return out


# -- the token budget ------------------------------------------------------------------------------
@dataclass
class Budget:
    """What the token-budget check did."""

    max_length: int | None
    fit: int = 0
    resized: int = 0
    skipped: int = 0
    unreadable: int = 0
    longest: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"token budget (max length {self.max_length}): {self.fit} rows fit, {self.resized} resized down, "
                f"{self.skipped} skipped (too long even with a {MIN_IMAGE_SIDE}px image)"
                + (f", {self.unreadable} skipped (unreadable image)" if self.unreadable else ""))


def _decode(data: bytes):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    return im.convert("RGB")


def row_length(processor, row: dict, images: dict | None = None) -> int:
    """Tokens of the longest of (prompt + image tokens + chosen), (prompt + rejected image tokens + rejected) and,
    with `cond_images`, (prompt + corrupted image tokens + chosen), as povid's collator builds them (untruncated).
    `images`: the row's decoded image lists by key (IMAGE_KEYS), when already decoded."""
    from povid_cli.train.collator import PairCollator

    images = images if images is not None else _decoded(row)
    ex = {"prompt": [dict(m) for m in row["prompt"]], "chosen": [dict(m) for m in row["chosen"]],
          "rejected": [dict(m) for m in row["rejected"]], **images}
    out = PairCollator(processor=processor, max_length=None, conditional="cond_images" in images).torch_call([ex])
    return int(out["attention_mask"].sum(dim=1).max())


def _decoded(row: dict) -> dict:
    return {k: [_decode(i["bytes"]) for i in row[k]] for k in IMAGE_KEYS if row.get(k)}


def fit_to_budget(rows: list[dict], processor, max_length: int | None, progress=None) -> tuple[list[dict], Budget]:
    """Keep rows whose full sequence fits in max_length; shrink the image of those that do not (dynamic-resolution
    processors then emit fewer image tokens), skip what still does not fit. TRL would otherwise truncate
    the sequence, and truncating image tokens crashes the forward ("Image features and image tokens do not match")."""
    budget = Budget(max_length)
    if max_length is None:
        budget.fit = len(rows)
        return rows, budget
    from PIL import Image

    from povid_cli.core.images import encode

    def shrink(ims: list) -> list:
        return [im.resize((max(MIN_IMAGE_SIDE, im.width * 3 // 4), max(MIN_IMAGE_SIDE, im.height * 3 // 4)),
                          Image.BICUBIC) for im in ims]

    kept = []
    for row in rows:
        try:
            images = _decoded(row)
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds; the row is unusable either way
            budget.unreadable += 1
            log.warning("skipping a pair with an unreadable image: %s", e)
            continue
        n = row_length(processor, row, images)
        budget.longest = max(budget.longest, n)
        if n <= max_length:
            kept.append(row)
            budget.fit += 1
        else:
            first = images.get("images") or []
            while n > max_length and first and min(first[0].size) * 3 // 4 >= MIN_IMAGE_SIDE:
                images = {k: shrink(ims) for k, ims in images.items()}  # the rejected / corrupted ones too
                first = images["images"]
                smaller = row_length(processor, row, images)
                if smaller >= n:  # a fixed-resolution processor: the image always costs the same
                    break
                n = smaller
            if n <= max_length:
                kept.append({**row, **{k: [{"bytes": encode(im), "path": None} for im in ims]
                                       for k, ims in images.items()}})
                budget.resized += 1
            else:
                budget.skipped += 1
                if len(budget.skipped_examples) < 3:
                    budget.skipped_examples.append(f"{n} tokens: {_text(row['prompt'][-1]['content'])[:60]!r}")
        if progress is not None:
            progress(1)
    return kept, budget


# -- splitting -------------------------------------------------------------------------------------
def split_eval(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], dict[str, list[dict]]]:
    """Hold out `fraction` of each kind (at least one row of a kind with 2+ rows) for evaluation."""
    if fraction <= 0:
        return rows, {}
    rng = random.Random(seed)
    train, evals = [], {}
    for kind in sorted({r["kind"] for r in rows}):
        group = [r for r in rows if r["kind"] == kind]
        idx = list(range(len(group)))
        rng.shuffle(idx)
        n = min(len(group) - 1, max(1, round(fraction * len(group)))) if len(group) > 1 else 0
        held = set(idx[:n])
        if n:
            evals[kind] = [group[i] for i in sorted(held)]
        train.extend(group[i] for i in range(len(group)) if i not in held)
    return train, evals


def to_hf(rows: list[dict], weighted: bool = False):
    """A `datasets.Dataset` whose image columns decode to PIL images (what the collators want), with the rows'
    `weight` when `weighted`, and `rejected_images` / `cond_images` when some row has them (null elsewhere)."""
    import datasets

    msg = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    optional = [k for k in IMAGE_KEYS[1:] if any(r.get(k) for r in rows)]
    features = datasets.Features({
        "images": datasets.List(datasets.Image()), "prompt": msg, "chosen": msg, "rejected": msg,
        "kind": datasets.Value("string"), **({"weight": datasets.Value("float32")} if weighted else {}),
        **{k: datasets.List(datasets.Image()) for k in optional},
    })
    return datasets.Dataset.from_list([{k: r.get(k) for k in features} for r in rows], features=features)

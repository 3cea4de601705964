"""Readers for what `povid eval` is given: COCO instances and captions, POPE question files, subset lists.

    coco = read_instances("annotations/instances_val2014.json")   # -> Coco
    coco.file_names[391895], coco.objects[391895]                  # 'COCO_val2014_000000391895.jpg', ['bicycle', 'person']
    coco.captions = read_captions("annotations/captions_val2014.json")
    questions = read_pope_file("coco_pope_random.json")            # -> list[PopeLine]
    ids = read_subset("trigger.txt", coco)                          # -> set of image ids

Every problem with a file (missing, not JSON, not the expected shape) raises `PovidError` with one line
that names the file and, where it helps, the line or record at fault. Paths may be local or URLs.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from povid_cli.core.errors import PovidError
from povid_cli.core.fs import resolve


@dataclass
class Coco:
    """What eval needs from a COCO instances file (and, optionally, its captions file).

    `objects` holds the category names of each image that has instances, sorted and unique; images
    without any instance are left out of it (CHAIR and POPE draw from images that have some).
    `frequency[c]` counts the images that show category c, `cooccurrence[a][b]` the images showing both.
    """

    path: str
    file_names: dict[Any, str]                       # image id -> file name (every image of the file)
    objects: dict[Any, list[str]]                    # image id -> its categories (images with instances)
    categories: list[str]                            # every category name, in the file's id order
    frequency: Counter = field(default_factory=Counter)
    cooccurrence: dict[str, Counter] = field(default_factory=dict)
    captions: dict[Any, list[str]] = field(default_factory=dict)


def _load_json(path: str, flag: str) -> Any:
    loc = resolve(path)
    if not loc.exists():
        raise PovidError(f"{flag} {path}: no such file")
    if loc.is_dir():
        raise PovidError(f"{flag} {path} is a folder; give the JSON file (e.g. annotations/instances_val2014.json)")
    raw = loc.read_bytes()
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise PovidError(f"{flag} {path} is not a JSON text file") from None
    except json.JSONDecodeError as e:
        raise PovidError(f"{flag} {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def _list_of(doc: Any, key: str, path: str, flag: str, expected: str) -> list:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise PovidError(f"{flag} {path} is not a COCO {expected} file: it has no '{key}' list")
    return doc[key]


def _image_files(doc: dict, path: str, flag: str) -> dict[Any, str]:
    files: dict[Any, str] = {}
    for k, im in enumerate(_list_of(doc, "images", path, flag, "annotation")):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise PovidError(f"{flag} {path}: images[{k}] has no 'id' and 'file_name'")
        files[im["id"]] = im["file_name"]
    return files


def read_instances(path: str) -> Coco:
    """A COCO instances file (instances_val2014.json, or any COCO-format detection file)."""
    flag = "--coco-instances"
    doc = _load_json(path, flag)
    anns = _list_of(doc, "annotations", path, flag, "instances")
    if anns and isinstance(anns[0], dict) and "caption" in anns[0] and "category_id" not in anns[0]:
        raise PovidError(f"{flag} {path} is a captions file; give it to --coco-captions and pass "
                         "the instances file (instances_*.json) here")
    cats: dict[Any, str] = {}
    for k, c in enumerate(_list_of(doc, "categories", path, flag, "instances")):
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            raise PovidError(f"{flag} {path}: categories[{k}] has no 'id' and 'name'")
        cats[c["id"]] = c["name"].strip().lower()
    files = _image_files(doc, path, flag)
    per_image: dict[Any, set[str]] = {}
    for k, a in enumerate(anns):
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
            raise PovidError(f"{flag} {path}: annotations[{k}] has no 'image_id' and 'category_id'")
        if a["category_id"] not in cats:
            raise PovidError(f"{flag} {path}: annotations[{k}] names category {a['category_id']!r}, "
                             "which is not in 'categories'")
        if a["image_id"] not in files:
            raise PovidError(f"{flag} {path}: annotations[{k}] is for image {a['image_id']!r}, which is not in 'images'")
        per_image.setdefault(a["image_id"], set()).add(cats[a["category_id"]])
    objects = {i: sorted(s) for i, s in per_image.items()}
    frequency: Counter = Counter()
    cooc: dict[str, Counter] = {}
    for objs in objects.values():
        frequency.update(objs)
        for a in objs:
            row = cooc.setdefault(a, Counter())
            row.update(b for b in objs if b != a)
    return Coco(path=path, file_names=files, objects=objects, categories=list(dict.fromkeys(cats.values())),
                frequency=frequency, cooccurrence=cooc)


def read_captions(path: str) -> dict[Any, list[str]]:
    """A COCO captions file (captions_val2014.json) -> image id -> its captions."""
    flag = "--coco-captions"
    doc = _load_json(path, flag)
    out: dict[Any, list[str]] = {}
    for k, a in enumerate(_list_of(doc, "annotations", path, flag, "captions")):
        if not isinstance(a, dict) or "image_id" not in a or not isinstance(a.get("caption"), str):
            hint = " (is it an instances file?)" if isinstance(a, dict) and "category_id" in a else ""
            raise PovidError(f"{flag} {path}: annotations[{k}] has no 'image_id' and 'caption'{hint}")
        out.setdefault(a["image_id"], []).append(a["caption"])
    return out


@dataclass(frozen=True)
class PopeLine:
    """One question of a published POPE file (coco_pope_random.json and friends)."""

    question_id: Any
    image: str   # a file name under --images
    text: str    # "Is there a dog in the image?"
    label: str   # "yes" | "no"

    @property
    def object(self) -> str:
        m = re.search(r"is there an? (.+?) in the (?:image|picture|photo)", self.text, re.IGNORECASE)
        return m.group(1).lower() if m else ""


def pope_split_name(path: str) -> str:
    """The split a POPE file holds, from its name: coco_pope_popular.json -> 'popular'."""
    stem = os.path.splitext(posixpath.basename(path.replace("\\", "/")))[0].lower()
    for split in ("adversarial", "popular", "random"):
        if split in stem:
            return split
    return stem


def read_pope_file(path: str) -> list[PopeLine]:
    """JSON lines with question_id, image, text and label (yes/no); a JSON list of such records works too."""
    flag = "--pope-file"
    loc = resolve(path)
    if not loc.exists() or loc.is_dir():
        raise PovidError(f"{flag} {path}: no such file")
    text = loc.read_bytes().decode("utf-8-sig", "replace")
    records: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        try:
            records = list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as e:
            raise PovidError(f"{flag} {path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise PovidError(f"{flag} {path}: line {n} is not JSON ({e.msg})") from None
    out = []
    for n, r in records:
        if not isinstance(r, dict) or not all(k in r for k in ("image", "text", "label")):
            raise PovidError(f"{flag} {path}: record {n} needs 'question_id', 'image', 'text' and 'label'")
        label = str(r["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise PovidError(f"{flag} {path}: record {n} has label {r['label']!r}; POPE labels are yes or no")
        out.append(PopeLine(r.get("question_id", n), str(r["image"]), str(r["text"]), label))
    if not out:
        raise PovidError(f"{flag} {path} holds no questions")
    return out


def read_subset(path: str, file_names: dict[Any, str]) -> set:
    """Image ids listed in a subset file: one id or file name per line (# comments allowed), or a JSON list.

    Entries are matched against the image ids and the file names (with or without their extension) of
    `file_names`; an entry that matches nothing is an error naming it.
    """
    loc = resolve(path)
    if not loc.exists() or loc.is_dir():
        raise PovidError(f"--subset {path}: no such file")
    text = loc.read_bytes().decode("utf-8-sig", "replace")
    if text.lstrip().startswith("["):
        try:
            entries = [str(e) for e in json.loads(text)]
        except (json.JSONDecodeError, TypeError) as e:
            raise PovidError(f"--subset {path} is not a JSON list: {e}") from None
    else:
        entries = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    entries = [e for e in entries if e]
    index: dict[str, Any] = {}
    for i, name in file_names.items():
        base = posixpath.basename(name)
        for k in (str(i), name, base, os.path.splitext(base)[0]):
            index.setdefault(k, i)
    ids, unknown = set(), []
    for e in entries:
        key = e if e in index else posixpath.basename(e)
        if key in index:
            ids.add(index[key])
        else:
            unknown.append(e)
    if unknown:
        raise PovidError(f"--subset {path}: {len(unknown)} entr{'y' if len(unknown) == 1 else 'ies'} match no image "
                         f"of the annotations, e.g. {unknown[0]!r} (give image ids or file names)")
    if not ids:
        raise PovidError(f"--subset {path} lists no images")
    return ids

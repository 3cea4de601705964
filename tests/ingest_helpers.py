"""Shared by the ingest layout tests: the bundled sample as (image, question, answer) rows, and the checks
every layout must pass (every record accounted for, every given pair exported before `filter`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample"


def sample_rows() -> list[dict]:
    """The 22 sample records as {id, image (path relative to examples/sample), question, answer}."""
    out = []
    for r in json.loads((SAMPLE / "llava.json").read_text()):
        conv = r["conversations"]
        out.append({"id": r["id"], "image": r["image"], "question": conv[0]["value"].replace("<image>", "").strip(),
                    "answer": conv[1]["value"]})
    return out


def image_bytes(rel: str) -> bytes:
    return (SAMPLE / rel).read_bytes()


def image_struct(rel: str) -> dict:
    return {"bytes": image_bytes(rel), "path": Path(rel).name}


def accounting(cli, data) -> dict:
    r = cli(["status", data, "--json"])
    assert r.exit_code == 0, r.output
    [ingest] = [s for s in json.loads(r.stdout)["stages"] if s["stage"] == "ingest"]
    return ingest["records"]


def exported_pairs(cli, data, out) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) of every pair `povid export --format trl` writes (before filter: the given ones)."""
    r = cli(["export", data, "-o", out, "--format", "trl"])
    assert r.exit_code == 0, r.output
    rows = []
    for f in sorted(Path(out).glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    text = lambda msgs: "".join(p["text"] or "" for m in msgs for p in m["content"] if p["type"] == "text")  # noqa: E731
    return sorted((text(r["prompt"]), text(r["chosen"]), text(r["rejected"])) for r in rows)


def check_counts(cli, data, out, *, records: int, items: int, pairs: list[tuple[str, str, str]],
                 skipped: dict | None = None, failed: int = 0) -> dict:
    """Every record accounted for, and given pairs out (export before filter) = given pairs in."""
    acc = accounting(cli, data)
    assert acc["records"] == records, acc
    assert (acc["items"], acc["skipped"], acc["failed"]) == (items, skipped or {}, failed), acc
    assert acc["records"] == acc["items"] + sum(acc["skipped"].values()) + acc["failed"]
    assert acc["given_pairs"] == len(pairs), acc
    if pairs:
        assert exported_pairs(cli, data, out) == sorted(pairs)
    return acc


def again_adds_nothing(cli, args: list, data) -> None:
    """Re-ingesting the same source adds no item and no pair, and the ids stay the same."""
    from povid_cli.core.store import Dataset

    def ids():
        ds = Dataset.open(str(data))
        given = ds.read_all("given")
        return (sorted(ds.read_all("items", columns=["id"]).column("id").to_pylist()),
                sorted(given.column("id").to_pylist()) if given is not None else [])

    before = ids()
    r = cli(args)
    assert "0 new items" in r.output and "(0 new)" in r.output, r.output
    assert ids() == before


def png(color=(10, 200, 10), size=(40, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()

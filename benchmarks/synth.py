"""Benchmark `povid synth` (the offline default pipeline) against its stages run one by one.

    python benchmarks/synth.py [--copies 23] [--workers N] [--repeats 2] [--keep DIR]

Replicates the bundled sample (11 photos, 22 LLaVA items) COPIES times with one pixel changed per
copy, so every copy has new bytes and new item ids (23 copies: 506 items). Then, in the same run,
alternating `--repeats` times (best of each counts; the machine may be shared):
- one by one: ingest, hallucinate (rules), distort (diffusion t=500), filter and export trl, each
  as its own step with its own executor, like running `povid ingest`, `povid hallucinate`, ... in turn;
- end to end: `run_synth` on a fresh DATA (what `povid synth SRC -o DATA` does, minus the start-up).
Both run in this process with the same workers. Prints one JSON object: items/s per stage, items/s
end to end, and ratio = end-to-end time / sum of the one-by-one stage times (target <= 1.3).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("POVID_NO_PROGRESS", "1")


def replicate(folder: Path, copies: int) -> Path:
    """COPIES x the sample, pixel (0, 0) set to the copy number: same content, different bytes and ids."""
    from PIL import Image

    sample = REPO / "examples" / "sample"
    records = json.loads((sample / "llava.json").read_text())
    (folder / "images").mkdir(parents=True)
    out = []
    for c in range(copies):
        for name in sorted({r["image"] for r in records}):
            src = sample / name
            img = Image.open(src).convert("RGB")
            img.putpixel((0, 0), (c % 256, (c * 7) % 256, 0))
            buf = io.BytesIO()
            img.save(buf, format="JPEG" if src.suffix.lower() in (".jpg", ".jpeg") else "PNG", quality=92)
            (folder / "images" / f"c{c:03d}_{src.name}").write_bytes(buf.getvalue())
        for r in records:
            out.append({**r, "id": f"c{c:03d}_{r['id']}", "image": f"images/c{c:03d}_{Path(r['image']).name}"})
    (folder / "llava.json").write_text(json.dumps(out))
    return folder / "llava.json"


def one_by_one(src: str, data: str, workers: int) -> dict[str, float]:
    from povid_cli.core.executors import make_executor
    from povid_cli.export.job import export_dataset
    from povid_cli.ingest.job import ingest
    from povid_cli.synth.plan import resolve
    from povid_cli.core.runner import run_stage
    from povid_cli.core.store import Dataset

    plan = resolve({}, [src], {"workers": workers}, data=data)
    times = {}
    ds = Dataset.open_or_create(data)
    with ds.lock():
        t0 = time.perf_counter()
        ex = make_executor("local", workers)
        ingest(ds, [src], plan.ingest, ex)
        ex.close()
        times["ingest"] = time.perf_counter() - t0
        for name, stage in plan.stages:
            t0 = time.perf_counter()
            ex = make_executor("local", workers)
            run_stage(ds, stage, ex)
            ex.close()
            times[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        export_dataset(ds, os.path.join(data, "export", "trl"), "trl")
        times["export"] = time.perf_counter() - t0
    return times


def end_to_end(src: str, data: str, workers: int) -> float:
    from povid_cli.synth.plan import resolve
    from povid_cli.synth.run import run_synth

    plan = resolve({}, [src], {"workers": workers}, data=data)
    t0 = time.perf_counter()
    result = run_synth(data, plan)
    assert result.failed == 0, result.failures
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=23)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keep", default=None, help="keep the data in this folder")
    args = ap.parse_args()

    from povid_cli.core.executors import default_workers
    from povid_cli.core.store import Dataset

    workers = args.workers or default_workers()
    root = Path(args.keep or tempfile.mkdtemp(prefix="povid-bench-synth-"))
    root.mkdir(parents=True, exist_ok=True)
    src = str(replicate(root / "src", args.copies))
    # warm-up (imports, page cache) on a few items, not timed
    end_to_end(str(replicate(root / "warm", 1)), str(root / "warm-data"), workers)

    best_stages: dict[str, float] = {}
    best_e2e = float("inf")
    items = pairs = 0
    for r in range(args.repeats):
        d1, d2 = root / f"stages-{r}", root / f"synth-{r}"
        for d in (d1, d2):
            shutil.rmtree(d, ignore_errors=True)
        times = one_by_one(src, str(d1), workers)
        if sum(times.values()) < sum(best_stages.values() or [float("inf")]):
            best_stages = times
        best_e2e = min(best_e2e, end_to_end(src, str(d2), workers))
        ds = Dataset.open(str(d2))
        items, pairs = ds.read_all("items").num_rows, ds.read_all("pairs").num_rows
        assert Dataset.open(str(d1)).read_all("pairs").column("id").to_pylist() == ds.read_all("pairs").column("id").to_pylist()

    total = sum(best_stages.values())
    print(json.dumps({
        "benchmark": "synth",
        "items": items,
        "pairs": pairs,
        "workers": workers,
        "stages_items_per_s": {k: round(items / v, 1) for k, v in best_stages.items()},
        "stages_seconds": {k: round(v, 3) for k, v in best_stages.items()},
        "stages_sum_seconds": round(total, 3),
        "synth_seconds": round(best_e2e, 3),
        "synth_items_per_s": round(items / best_e2e, 1),
        "ratio_synth_over_stage_sum": round(best_e2e / total, 3),
        "target_ratio_max": 1.3,
    }, indent=2))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

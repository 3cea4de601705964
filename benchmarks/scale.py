"""How `povid synth` scales: full runs at several sizes, the cost of a cron refresh and of a no-op run, DATA's
size against its sources, and filter's dedup memory at 100,000 pairs.

    python benchmarks/scale.py                                  # sizes 300,600,1200,2400,4800 (~15 min on 2 cores)
    python benchmarks/scale.py --sizes 300,1200 --filter-pairs 20000

For each size N: N distinct photos (random crops, flips and colour shifts of the bundled sample's photos,
JPEG, ~500 px), one LLaVA record each (the sample's answer for the photo), then, each as a user would run
it (`python -m povid_cli synth SRC -o DATA`, start-up included):
- a full synth (defaults: ingest, rules hallucinate, diffusion distort, filter, trl export): items/s, peak RSS
  of the process tree, DATA bytes (the export aside) / source bytes;
- a no-op run (nothing new), twice: the best counts;
- a refresh adding 1% new photos (at least --new), twice with different photos: the best counts.
Then filter alone on --filter-pairs text pairs (given rejected answers, all distinct): pairs/s and the dedup
index's bytes per kept pair (the index a later run loads back from the `dedup` output).
Prints one JSON object; `refresh_ratio` compares the refresh of --new items on the largest size with the
same refresh on the size a quarter as large (target <= 1.3), `noop_ratio` likewise.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SAMPLE = REPO / "examples" / "sample"


def make_photos(folder: Path, start: int, n: int, seed: int = 0) -> list[dict]:
    """Photos start..start+n-1 in FOLDER/images and their LLaVA records: each a distinct crop of a sample photo."""
    from PIL import Image, ImageEnhance, ImageOps

    records = {}
    for r in json.loads((SAMPLE / "llava.json").read_text()):
        records.setdefault(r["image"], r)  # one record (its first question and answer) per photo
    sources = sorted(records)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        rng = random.Random(seed * 1_000_003 + i)
        name = sources[i % len(sources)]
        img = Image.open(SAMPLE / name).convert("RGB")
        w, h = img.size
        f = rng.uniform(0.6, 0.95)
        cw, ch = int(w * f), int(h * f)
        x, y = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
        img = img.crop((x, y, x + cw, y + ch))
        img.thumbnail((512, 512))
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        img = ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(rng.uniform(0.85, 1.15))).enhance(rng.uniform(0.8, 1.2))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=88)
        rel = f"images/p{i:06d}.jpg"
        (folder / rel).write_bytes(buf.getvalue())
        rec = records[name]
        out.append({**rec, "id": f"p{i:06d}", "image": rel})
    return out


def write_source(folder: Path, records: list[dict]) -> Path:
    path = folder / "llava.json"
    path.write_text(json.dumps(records))
    return path


def tree_bytes(path: Path, skip: tuple[str, ...] = ()) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        if Path(root) == path:
            dirs[:] = [d for d in dirs if d not in skip]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files if not os.path.islink(os.path.join(root, f)))
    return total


def synth(src: Path, data: Path, workers: int) -> tuple[float, int, float]:
    """(wall seconds, peak RSS of the process tree in bytes, CPU seconds of the tree) of `povid synth SRC -o DATA`."""
    import resource

    import psutil

    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = dict(os.environ, POVID_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "povid_cli", "synth", str(src), "-o", str(data), "--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"povid synth failed (exit {proc.returncode}):\n{out[-2000:]}")
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers' time rolls up through synth into it
    return wall, peak, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)


def stage_seconds(data: Path) -> dict[str, float]:
    """Wall seconds x workers of each stage's first run (the manifest's record): core-seconds it held."""
    m = json.loads((data / "manifest.json").read_text())
    out = {}
    for name, rec in m.get("stages", {}).items():
        run = (rec.get("runs") or [{}])[0]
        out[name] = run.get("seconds", 0.0) * (run.get("workers") or 1)
    return out


def one_size(root: Path, n: int, new: int, workers: int) -> dict:
    src, data = root / f"src-{n}", root / f"data-{n}"
    records = make_photos(src, 0, n)
    src_json = write_source(src, records)
    full_s, peak, cpu = synth(src_json, data, workers)
    stages = stage_seconds(data)
    source_bytes = tree_bytes(src)
    data_bytes = tree_bytes(data, skip=("export",))
    export_bytes = tree_bytes(data / "export")  # the trl export: self-contained, every pair with its images
    noop = min(synth(src_json, data, workers)[0] for _ in range(2))
    add = max(new, math.ceil(n / 100))
    refresh = []
    for r in range(2):
        records += make_photos(src, n + r * add, add)
        refresh.append(synth(write_source(src, records), data, workers)[0])
    return {"items": n, "items_per_s": round(n / full_s, 2), "full_seconds": round(full_s, 1),
            "peak_rss_mb": round(peak / 2**20, 1), "source_mb": round(source_bytes / 2**20, 2),
            "data_mb": round(data_bytes / 2**20, 2), "data_over_source": round(data_bytes / source_bytes, 2),
            "data_kb_per_item": round(data_bytes / n / 1024, 1), "export_mb": round(export_bytes / 2**20, 2), "cpu_s_per_item": round(cpu / n, 4),
            "stage_core_s_per_item": {k: round(v / n, 4) for k, v in stages.items()},
            "refresh_new_items": add, "refresh_seconds": round(min(refresh), 2), "noop_seconds": round(noop, 2)}


def filter_alone(root: Path, n: int) -> dict:
    """filter on N text pairs (items with one given rejected answer each, all distinct): pairs/s, dedup bytes/pair."""
    import pyarrow as pa

    from povid_cli.core.runner import run_stage
    from povid_cli.core.stage import pair_id
    from povid_cli.core.schemas import GIVEN, ITEMS
    from povid_cli.core.store import Dataset, digest
    from povid_cli.ingest.normalise import image_sha256, item_id
    from stages.filter import FilterConfig, FilterStage
    from stages.minhash import DedupIndex

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 120, 30)).save(buf, format="PNG")
    png, sha = buf.getvalue(), image_sha256(buf.getvalue())
    answers = [r["conversations"][-1]["value"] for r in json.loads((SAMPLE / "llava.json").read_text())]
    words = sorted({w.strip(".,").lower() for a in answers for w in a.split()})
    rng = random.Random(0)
    ds = Dataset.open_or_create(str(root / "filter-data"))
    shard = 4096
    for k in range(0, n, shard):
        items, given = [], []
        for i in range(k, min(n, k + shard)):
            # 40 words drawn from the sample answers' vocabulary: distinct texts, as captions of different photos are
            chosen = f"Picture {i} shows a " + " ".join(rng.choice(words) for _ in range(40)) + "."
            rejected = chosen.replace(" a ", " a red ", 1) + " There is also a " + rng.choice(words) + " nearby."
            iid = item_id(sha, f"Describe picture {i}.")
            items.append({"id": iid, "image": {"bytes": png, "path": None}, "image_sha256": sha, "width": 8, "height": 8,
                          "prompt": f"Describe picture {i}.", "chosen": chosen, "has_answer": True, "task": "caption",
                          "source": "bench", "source_id": str(i), "turn": 0})
            given.append({"id": pair_id(iid, "text", None, rejected), "item_id": iid, "rejected": rejected,
                          "source": "bench", "source_id": str(i)})
        keys = {"items": digest(k, "items"), "given": digest(k, "given")}
        ds.write_shard("items", k // shard, pa.Table.from_pylist(items, schema=ITEMS), keys["items"])
        ds.write_shard("given", k // shard, pa.Table.from_pylist(given, schema=GIVEN), keys["given"])
        rec = ds.stage_record("ingest")  # both outputs of one shard under one record, as ingest commits them
        rec["writes"] = ["given"]
        rec.setdefault("shards", {})[f"{k // shard:05d}"] = {"key": keys["items"], "keys": keys, "inputs": {},
                                                              "rows": {"items": len(items), "given": len(given)}}
    ds.save_manifest()
    cfg = FilterConfig(text_hallucination=False, min_similarity=0.0)
    t0 = time.perf_counter()
    run = run_stage(ds, FilterStage(cfg))
    seconds = time.perf_counter() - t0
    index = DedupIndex(cfg.near_dup_threshold)
    stage = FilterStage(cfg)
    stage.index = index
    for k in ds.committed_shards("dedup"):
        stage.observe({"dedup": ds.read_shard("dedup", k).to_pylist()})
    kept = run.rows_out.get("pairs", 0)
    return {"pairs": n, "kept": kept, "seconds": round(seconds, 1), "pairs_per_s": round(n / seconds, 1),
            "dedup_index_bytes": index.nbytes, "dedup_bytes_per_kept_pair": round(index.nbytes / max(kept, 1), 1),
            "target_bytes_per_pair_max": 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--sizes", default="300,600,1200,2400,4800", help="comma-separated item counts")
    ap.add_argument("--new", type=int, default=24, help="fewest new items a refresh adds (else 1%%)")
    ap.add_argument("--filter-pairs", type=int, default=100_000, help="0: skip the filter run")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--keep", help="keep everything in this folder")
    a = ap.parse_args()
    from povid_cli.core.executors import default_workers

    workers = a.workers or default_workers()
    sizes = sorted(int(x) for x in a.sizes.split(","))
    root = Path(a.keep or tempfile.mkdtemp(prefix="povid-bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        runs = {}
        for n in sizes:
            runs[n] = one_size(root, n, a.new, workers)
            print(json.dumps(runs[n]), file=sys.stderr, flush=True)
        result = {"benchmark": "scale", "workers": workers, "sizes": [runs[n] for n in sizes]}
        # the largest pair of sizes (m, 4m) whose refreshes added the same number of items
        pairs = [(n, 4 * n) for n in sizes if 4 * n in runs
                 and runs[n]["refresh_new_items"] == runs[4 * n]["refresh_new_items"]]
        if pairs:
            small, big = pairs[-1]
            result["refresh_ratio"] = {
                "compares": f"{runs[big]['refresh_new_items']} new items on {big} vs on {small}",
                "refresh": round(runs[big]["refresh_seconds"] / runs[small]["refresh_seconds"], 3),
                "noop": round(runs[big]["noop_seconds"] / runs[small]["noop_seconds"], 3), "target_max": 1.3}
        if a.filter_pairs:
            result["filter"] = filter_alone(root, a.filter_pairs)
        result["wall_s"] = round(time.time() - t0, 1)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark `povid distort` (diffusion) against a plain decode-and-encode loop, and the driver's own I/O.

    python benchmarks/distort.py [--n 200] [--workers 2] [--against REV] [--keep DIR]

Makes N distinct 640x480 JPEGs (crops of the bundled sample photos), ingests them (not timed), then in
the same run times:
- baseline: one process decoding each JPEG with PIL and encoding it as PNG (zlib level 1, as
  povid_cli.core.images.encode does), at the original 640x480 size: what any tool storing these images in
  the stage's output format must at least do;
- `povid distort DATA` as a user runs it (a subprocess: start-up, reading and writing Parquet included),
  default method (diffusion t=500), default --size 336, default workers (= cores).
The two alternate `--repeats` times and each one's best run counts (the machine may be shared).
Prints one JSON object: images/s of both, the wall-time ratio distort/baseline (target <= 1.5), a
per-step profile of the stage's work on one core (ms per image), and the main process's own read/write
traffic per item (rchar + wchar of its own threads, children excluded; target <= 50 KB): the workers
read and write the shards, the driver only plans and commits. `--against REV` also runs `povid distort`
of that git revision (checked out in a temporary worktree) on the same data, alternating with the current
one, and prints both, so "no slower than before" is measured in one run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_jpegs(folder: Path, n: int) -> list[Path]:
    photos = sorted((REPO / "examples" / "sample" / "images").iterdir())
    rng = np.random.default_rng(0)
    sources = [Image.open(p).convert("RGB") for p in photos]
    paths = []
    for i in range(n):
        im = sources[i % len(sources)]
        # A random crop of at least 4:3 at 60-100% of the photo, resized to 640x480: every file distinct.
        w, h = im.size
        cw = int(min(w, h * 4 / 3) * rng.uniform(0.6, 1.0))
        ch = int(cw * 3 / 4)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x, y, x + cw, y + ch)).resize((640, 480), Image.Resampling.BICUBIC)
        if i % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        p = folder / f"img{i:04d}.jpg"
        crop.save(p, format="JPEG", quality=90)
        paths.append(p)
    return paths


def baseline_loop(paths: list[Path]) -> tuple[float, int]:
    total = 0
    t0 = time.perf_counter()
    for p in paths:
        im = Image.open(p)
        im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=1)
        total += len(buf.getvalue())
    return time.perf_counter() - t0, total


def profile_stage(paths: list[Path]) -> dict:
    """ms per image of each step of the stage's work, on one core (no parquet, no processes)."""
    from stages import diffusion as D
    from stages.distort import decode, encode, resize_short_side
    from stages.distortions import compressible, image_seed

    steps = {"decode": 0.0, "resize": 0.0, "noise": 0.0, "encode": 0.0}
    for i, p in enumerate(paths):
        data = p.read_bytes()
        t0 = time.perf_counter()
        rgb = decode(data)
        t1 = time.perf_counter()
        small = resize_short_side(rgb, 336)
        t2 = time.perf_counter()
        noisy = D.noise_pixels(small, 500, np.random.default_rng(image_seed(0, str(i))))
        t3 = time.perf_counter()
        encode(noisy, "png", 95, compressible("diffusion", {"t": 500}))  # as the stage does
        t4 = time.perf_counter()
        for k, v in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            steps[k] += v
    return {k: round(v / len(paths) * 1000, 2) for k, v in steps.items()}


# Runs the CLI in this interpreter and, at exit, writes its own /proc/self/io (children are not counted).
IO_WRAPPER = """
import atexit, json, os, sys, threading, time
# Per-thread counters (/proc/self/task/TID/io) of this process's threads: children are never among them
# (the process-wide /proc/self/io adds the counters of reaped children, i.e. the pool's workers at shutdown).
last, me = {}, []
def _sample():
    for tid in os.listdir("/proc/self/task"):
        if int(tid) in me:
            continue
        try:
            io = dict(l.split(": ") for l in open(f"/proc/self/task/{tid}/io").read().splitlines())
        except OSError:
            continue  # the thread ended
        last[tid] = {k: int(v) for k, v in io.items()}
def _loop():
    me.append(threading.get_native_id())
    while True:
        _sample()
        time.sleep(0.002)
def _dump(path):
    _sample()
    with open(path, "w") as f:
        json.dump({k: sum(v[k] for v in last.values()) for k in ("rchar", "wchar", "read_bytes", "write_bytes")}, f)
atexit.register(_dump, sys.argv.pop(1))
threading.Thread(target=_loop, daemon=True).start()
from povid_cli.cli import main
sys.argv = ["povid"] + sys.argv[1:]
main()
"""


def run_distort(data: Path, workers: int | None, env: dict, cwd: Path, io_file: Path, extra: tuple = ()) -> float:
    """Wall seconds of `povid distort DATA` in a subprocess; the I/O counters of its own threads (sampled
    every 2 ms, the last value of each thread kept) land in io_file."""
    shutil.rmtree(data / "distorted", ignore_errors=True)
    shutil.rmtree(data / ".parts", ignore_errors=True)
    cmd = [sys.executable, "-c", IO_WRAPPER, str(io_file), "distort", str(data)]
    cmd += (["--workers", str(workers)] if workers else []) + list(extra)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"povid distort failed: {r.stderr.strip()[-2000:]}")
    return seconds


def io_per_item(io_file: Path, n: int) -> dict:
    io = json.loads(io_file.read_text())
    return {"rchar_kb_per_item": round(io["rchar"] / n / 1024, 1), "wchar_kb_per_item": round(io["wchar"] / n / 1024, 1),
            "kb_per_item": round((io["rchar"] + io["wchar"]) / n / 1024, 1)}


def checkout(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev], check=True,
                   capture_output=True)
    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2, help="povid distort --workers (0: povid's default, = cores)")
    ap.add_argument("--against", default=None, help="also time this git revision's `povid distort` (e.g. the commit "
                    "before a change), alternating with the current one")
    ap.add_argument("--repeats", type=int, default=2, help="alternate runs of each; the best one counts")
    ap.add_argument("--keep", default=None, help="keep the files in this folder")
    ap.add_argument("--store", choices=("pixels", "recipe"), default="pixels",
                    help="povid distort --store of the current revision: pixels (default here) writes the PNGs, the "
                         "same output as the baseline and as revisions before recipes; recipe is distort's default")
    args = ap.parse_args()
    store = ("--store", args.store)

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="povid-bench-distort-"))
    imgs = tmp / "images"
    imgs.mkdir(parents=True, exist_ok=True)
    paths = make_jpegs(imgs, args.n)
    data = tmp / "data"
    env = {**os.environ, "POVID_NO_PROGRESS": "1"}
    povid = [sys.executable, "-m", "povid_cli"]
    subprocess.run([*povid, "ingest", str(imgs), "-o", str(data), "--prompt", "Describe this image in detail."],
                   check=True, env=env, cwd=REPO, capture_output=True)

    # Warm the page cache and the imports equally for both contenders, then alternate the two
    # `--repeats` times and keep each one's best run: on a shared machine that is the fairest figure.
    baseline_loop(paths[:20])
    workers = args.workers or None
    old_tree = checkout(args.against, tmp / "against") if args.against else None
    base_runs, dist_runs, old_runs = [], [], []
    try:
        for _ in range(args.repeats):
            s, base_bytes = baseline_loop(paths)
            base_runs.append(s)
            dist_runs.append(run_distort(data, workers, env, REPO, tmp / "io-current.json", store))
            if old_tree is not None:
                old_env = {**env, "PYTHONPATH": str(old_tree)}
                old_runs.append(run_distort(data, workers, old_env, old_tree, tmp / "io-against.json"))
    finally:
        if old_tree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], capture_output=True)
    base_s, dist_s = min(base_runs), min(dist_runs)
    if old_runs:  # the last run above was the old one: run the current one again for its output
        run_distort(data, workers, env, REPO, tmp / "io-last.json", store)

    import pyarrow.parquet as pq

    t = pq.read_table(data / "distorted", columns=["image"])
    out_bytes = sum(len(x["bytes"] or b"") for x in t.column("image").to_pylist())  # recipes: no bytes
    from povid_cli.core.executors import default_workers

    result = {
        "benchmark": "distort",
        "images": args.n,
        "input": "640x480 JPEG q90",
        "cores": default_workers(),
        "repeats": args.repeats,
        "baseline": {"what": "PIL decode + PNG encode (zlib level 1) at 640x480, one process",
                     "seconds": round(base_s, 3), "runs": [round(x, 2) for x in base_runs], "images_per_s": round(args.n / base_s, 1),
                     "kb_per_image": round(base_bytes / args.n / 1024, 1)},
        "distort": {"what": f"povid distort DATA --store {args.store} (subprocess; diffusion t=500, --size 336, PNG)",
                    "workers": workers or default_workers(),
                    "seconds": round(dist_s, 3), "runs": [round(x, 2) for x in dist_runs], "images_per_s": round(args.n / dist_s, 1),
                    "kb_per_image": round(out_bytes / args.n / 1024, 1), "rows": t.num_rows},
        "ratio_wall_distort_over_baseline": round(dist_s / base_s, 3),
        "target_ratio": 1.5,
        "meets_target": dist_s / base_s <= 1.5,
        "driver_io": {"what": "rchar + wchar of the main process's own threads (/proc/self/task/*/io; children excluded)",
                      **io_per_item(tmp / "io-current.json", args.n), "target_kb_per_item": 50,
                      "meets_target": io_per_item(tmp / "io-current.json", args.n)["kb_per_item"] <= 50},
        "stage_profile_ms_per_image_one_core": profile_stage(paths[:100]),
    }
    if old_runs:
        old_s = min(old_runs)
        result["against"] = {"rev": args.against, "seconds": round(old_s, 3), "runs": [round(x, 2) for x in old_runs],
                             "driver_io": io_per_item(tmp / "io-against.json", args.n),
                             "ratio_wall_current_over_against": round(dist_s / old_s, 3)}
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

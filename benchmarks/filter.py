"""Benchmark `filter` on a few thousand text and image pairs, against the same run with every filter off.

    python benchmarks/filter.py [--items 2000] [--samples 2]

Builds a dataset (not timed) of N items in shards of 512 with small images and the bundled sample's
ground-truth answers (varied per item so that answers are distinct), one `rules` hallucination per
item (the real hallucinate stage) and `--samples` sampled answers per item (image pairs: the answer of
another item, some of them planted duplicates, refusals and truncations). Then, in the same run, times
through the runner (Parquet read and write included):
- filter with its defaults (all checks, MinHash dedup over the dataset, no judge);
- baseline: filter with every check and the dedup switched off (reading, pairing, scoring, writing).
Prints one JSON object: pairs/s of both, and the ratio of their wall times.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from povid_cli.core.runner import run_stage  # noqa: E402
from povid_cli.core.schemas import ITEMS, SAMPLED  # noqa: E402
from povid_cli.core.store import Dataset, digest  # noqa: E402
from stages.filter import FilterConfig, FilterStage  # noqa: E402
from stages.hallucinate import HallucinateConfig, HallucinateStage  # noqa: E402
from povid_cli.ingest.normalise import image_sha256, item_id  # noqa: E402

ADJ = ["quiet", "sunny", "old", "busy", "modern", "small", "wide", "green", "distant", "bright"]


def build(path: Path, n: int, samples: int) -> None:
    answers = [r["conversations"][-1]["value"] for r in json.loads((REPO / "examples/sample/llava.json").read_text())]
    objects = [r.get("objects") for r in json.loads((REPO / "examples/sample/llava.json").read_text())]
    rng = random.Random(0)
    ds = Dataset.open_or_create(str(path))
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (i % 256, (i // 256) % 256, 90)).save(buf, format="PNG")
        data = buf.getvalue()
        j = i % len(answers)
        chosen = f"{answers[j]} The scene looks {rng.choice(ADJ)} and {rng.choice(ADJ)}, picture {i}."
        sha = image_sha256(data)
        rows.append({"id": item_id(sha, "Describe this image."), "image": {"bytes": data, "path": None},
                     "image_sha256": sha, "width": 64, "height": 48, "prompt": "Describe this image.",
                     "chosen": chosen, "has_answer": True, "rejected": None, "task": "caption",
                     "objects": objects[j], "source": "bench", "source_id": str(i), "turn": 0})
    for k in range(0, n, 512):
        chunk = rows[k : k + 512]
        ds.commit_shard("ingest", "items", k // 512, pa.Table.from_pylist(chunk, schema=ITEMS), digest([r["id"] for r in chunk]))
        sampled = []
        for r in chunk:
            resp, fin = [], []
            for s in range(samples):
                x = rng.random()
                other = rows[rng.randrange(n)]["chosen"]
                resp.append("I'm sorry, I cannot see the image." if x < 0.05 else other if x > 0.1 else r["chosen"][:60])
                fin.append("length" if rng.random() < 0.05 else "stop")
            sampled.append({"id": f"{r['id']}-diffusion", "item_id": r["id"], "variant": "diffusion", "responses": resp,
                            "finish_reasons": fin, "logprobs": None, "model": "bench", "backend": "bench",
                            "temperature": 1.0, "top_p": 1.0, "max_tokens": 128, "n": samples})
        ds.commit_shard("sample", "sampled", k // 512, pa.Table.from_pylist(sampled, schema=SAMPLED), f"s{k}")
    run_stage(ds, HallucinateStage(HallucinateConfig()))


def timed(path: Path, cfg: FilterConfig) -> tuple[float, int, int]:
    ds = Dataset.open(str(path))
    for out in ("pairs", "dropped"):
        shutil.rmtree(path / out, ignore_errors=True)
    t0 = time.perf_counter()
    run = run_stage(ds, FilterStage(cfg))
    return time.perf_counter() - t0, run.rows_out.get("pairs", 0), run.rows_out.get("dropped", 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        build(data, args.items, args.samples)
        off = FilterConfig(min_words=0, min_length_ratio=0, drop_truncated=False, max_repetition=1.0,
                           drop_refusals=False, drop_identical=False, min_similarity=0, text_hallucination=False,
                           image_new_content=False, dedup=False)
        base_s, base_kept, _ = timed(data, off)
        full_s, kept, dropped = timed(data, FilterConfig())
    candidates = base_kept
    print(json.dumps({
        "candidates": candidates, "kept": kept, "dropped": dropped,
        "seconds": round(full_s, 3), "pairs_per_s": round(candidates / full_s, 1),
        "baseline": "filter with every check and dedup off (read, pair, score, write)",
        "baseline_seconds": round(base_s, 3), "baseline_pairs_per_s": round(candidates / base_s, 1),
        "ratio_vs_baseline": round(full_s / base_s, 3),
    }))


if __name__ == "__main__":
    main()

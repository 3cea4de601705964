"""Benchmark `povid hallucinate --backend openai` against a loopback server with a fixed latency.

    python benchmarks/hallucinate_api.py [--n 200] [--concurrency 16] [--latency 0.2]

Starts the project's fake OpenAI-compatible server (tests/fake_openai.py) answering every request after
`--latency` seconds, writes N items, then times the stage as a user runs it (`povid hallucinate DATA
--backend openai --concurrency C` in a subprocess). Throughput is measured on the request phase, from the
first request the server receives to the last answer it sends; the stage's own time (manifest: setup, prompts,
parsing, Parquet included) and the CLI's wall time are reported too. The baseline is the ideal: C requests in
flight all the time, i.e. C / latency requests per second; a bare aiohttp client loop with the same
concurrency (no retries, cache or parsing) is measured against the same server in the same run, as the
practical ceiling on this machine. Then it deletes DATA/hallucinated
and runs again: every answer must come from the on-disk cache (requests sent: target 0).
Prints one JSON object; `ratio_vs_ideal` is the request-phase throughput over C / latency (target >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def make_items(path: Path, n: int) -> None:
    import pyarrow as pa

    from povid_cli.core.images import encode
    from povid_cli.core.schemas import ITEMS
    from povid_cli.core.store import Dataset, digest
    from PIL import Image

    ds = Dataset.open_or_create(str(path))
    png = encode(Image.new("RGB", (32, 32), (200, 30, 30)))
    rows = []
    for i in range(n):
        rows.append({
            "id": f"item{i:05d}", "image": {"bytes": png, "path": f"{i}.png"}, "image_sha256": f"{i:064x}",
            "width": 32, "height": 32, "prompt": "Describe this image in detail.",
            "chosen": f"A red cup number {i} sits on a wooden table next to a small spoon.", "has_answer": True,
            "rejected": None, "task": "caption", "objects": None, "source": "bench", "source_id": str(i), "turn": 0,
        })
    ds.commit_shard("ingest", "items", 0, pa.Table.from_pylist(rows, schema=ITEMS), digest(sorted(r["id"] for r in rows)))


def run_cli(data: Path, url: str, concurrency: int) -> float:
    env = dict(os.environ, POVID_NO_PROGRESS="1", OPENAI_API_KEY="sk-bench-not-a-key")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "povid_cli", "hallucinate", str(data), "--backend", "openai", "--model",
                    "fake-model", "--api-base", url, "--concurrency", str(concurrency)],
                   env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


BARE_CLIENT = """
import asyncio, sys, aiohttp
async def main(url, n, c):
    sem = asyncio.Semaphore(c)
    async with aiohttp.ClientSession() as s:
        async def one(i):
            async with sem:
                body = {"model": "fake-model", "messages": [{"role": "user", "content": f"Correct answer: A red cup number {i}."}]}
                async with s.post(url + "/chat/completions", json=body) as r:
                    return (await r.json())["choices"][0]["message"]["content"]
        await asyncio.gather(*(one(i) for i in range(n)))
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def run_bare(url: str, n: int, concurrency: int) -> None:
    """The baseline client: a bare aiohttp loop with the same concurrency (no retries, cache, parsing)."""
    subprocess.run([sys.executable, "-c", BARE_CLIENT, url, str(n), str(concurrency)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2)
    a = ap.parse_args()

    from fake_openai import FakeOpenAI

    tmp = Path(tempfile.mkdtemp(prefix="povid-bench-"))
    try:
        data = tmp / "data"
        make_items(data, a.n)
        with FakeOpenAI(latency=a.latency) as srv:
            wall = run_cli(data, srv.url, a.concurrency)
            sent = srv.count
            request_phase = srv.last_response_at - srv.first_request_at
            manifest = json.loads((data / "manifest.json").read_text())["stages"]["hallucinate"]
            stage_s = sum(s["seconds"] for s in manifest["shards"].values())
            shutil.rmtree(data / "hallucinated")
            before = srv.count
            wall_cached = run_cli(data, srv.url, a.concurrency)
            cached_requests = srv.count - before
            max_in_flight = srv.max_in_flight
            srv.reset()
            run_bare(srv.url, a.n, a.concurrency)
            bare_phase = srv.last_response_at - srv.first_request_at
        ideal = a.concurrency / a.latency
        out = {
            "items": a.n, "concurrency": a.concurrency, "latency_s": a.latency,
            "requests_sent": sent, "max_in_flight": max_in_flight,
            "ideal_requests_per_s": round(ideal, 2),
            "requests_per_s": round(a.n / request_phase, 2),
            "ratio_vs_ideal": round(a.n / request_phase / ideal, 3),
            "bare_client_requests_per_s": round(a.n / bare_phase, 2),
            "ratio_vs_bare_client": round(bare_phase / request_phase, 3),
            "stage_s": round(stage_s, 2), "stage_ratio_vs_ideal": round(a.n / stage_s / ideal, 3),
            "cli_wall_s": round(wall, 2), "cli_requests_per_s": round(a.n / wall, 2),
            "cli_ratio_vs_ideal": round(a.n / wall / ideal, 3),
            "cached_rerun_requests": cached_requests, "cached_rerun_wall_s": round(wall_cached, 2),
            "load_average_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),  # a busy machine adds wake-up delays
        }
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

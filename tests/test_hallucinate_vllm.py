"""`povid hallucinate --backend openai` against a real OpenAI-compatible server: `vllm serve` (vllm-cpu)
with a tiny random VLM. Run in .venv-vllm: `.venv-vllm/bin/python -m pytest -m vllm tests/test_hallucinate_vllm.py`.

The tiny model writes gibberish, which is the point: whatever comes back must end as a hallucinated row or
as a failed row with a reason, and the tokens must be counted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pyarrow.parquet as pq
import pytest

from povid_cli.store import Dataset

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tiny_vlm, tmp_path_factory):
    pytest.importorskip("vllm")
    model = tiny_vlm("qwen2_vl")
    tmp = tmp_path_factory.mktemp("vllm-serve")
    port = free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind", HF_HUB_OFFLINE="1",
               VLLM_CACHE_ROOT=str(tmp / "cache"), VLLM_ENABLE_V1_MULTIPROCESSING="0")
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name",
         "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096", "--enforce-eager",
         "--dtype", "float32", "--limit-mm-per-prompt", '{"image": 1}'],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail("vllm serve exited:\n" + (tmp / "server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("vllm serve did not come up:\n" + (tmp / "server.log").read_text()[-3000:])
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_vllm_serve_end_to_end(cli, sample_data, vllm_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server needs no key
    args = ["hallucinate", sample_data, "--backend", "openai", "--api-base", vllm_server, "--model", "tiny",
            "--max-tokens", "24", "--limit", "6", "--concurrency", "4", "--timeout", "120", "--send-image"]
    r = cli(args)
    assert r.exit_code in (0, 1), r.output
    ds = Dataset.open(str(sample_data))
    items = [row["id"] for row in ds.read_all("items").to_pylist()][:6]
    done = {row["item_id"]: row for row in ds.read_all("hallucinated").to_pylist()} if ds.has("hallucinated") else {}
    fdir = sample_data / "failed" / "hallucinate"
    failed = {row["id"]: row for row in pq.read_table(str(fdir)).to_pylist()} if fdir.exists() else {}
    assert set(done) | set(failed) == set(items)
    assert all(f["error"] and f["kind"] for f in failed.values())
    transport = [f for f in failed.values() if f["kind"] in ("transient", "api")]
    assert not transport, transport  # the server understood every request; only its answers may be unusable
    assert all(row["rejected"].strip() and row["model"] == "tiny" for row in done.values())
    usage = json.loads((sample_data / "manifest.json").read_text())["stages"]["hallucinate"]["usage"]
    assert usage["requests"] >= 6 and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0

    # the same again: everything comes from the cache, nothing is sent
    import shutil

    shutil.rmtree(sample_data / "hallucinated", ignore_errors=True)
    r = cli(args)
    usage2 = json.loads((sample_data / "manifest.json").read_text())["stages"]["hallucinate"]["usage"]
    assert usage2["requests"] == usage["requests"] + sum(1 for f in failed.values() if f["retryable"])

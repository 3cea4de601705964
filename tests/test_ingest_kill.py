"""Killing `povid ingest` midway (SIGKILL) and running it again gives the same items, no duplicates, no temp files."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from povid_cli.core.store import Dataset
from povid_cli.ingest.normalise import item_id
from povid_cli.ingest.sources import DEFAULT_PROMPT

REPO = Path(__file__).resolve().parent.parent
N = 400


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_same_items(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(7)
    expected = set()
    for i in range(N):
        # Grayscale JPEGs: each one is decoded, converted and re-encoded, so the run takes a while.
        arr = rng.integers(0, 255, (96, 128), dtype=np.uint8)
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(arr, "L").save(path, quality=90)
        expected.add(item_id(hashlib.sha256(path.read_bytes()).hexdigest(), DEFAULT_PROMPT))
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "povid_cli", "ingest", str(folder), "-o", str(data), "--shard-size", "10",
           "--workers", "2"]
    env = {**os.environ, "POVID_NO_PROGRESS": "1"}

    # Its own process group, killed as a whole below: what a job scheduler, `timeout -s KILL` or the
    # OOM killer of a container does to the command and its worker processes.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    items_dir = data / "items"
    deadline = time.monotonic() + 120
    while not (items_dir.is_dir() and any(p.name.startswith("part-") for p in items_dir.iterdir())):
        assert proc.poll() is None, "ingest ended before writing a shard: " + proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no shard after 120 s"
        time.sleep(0.005)
    assert proc.poll() is None, "ingest finished before it could be killed; make the test data bigger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    while _group_alive(proc.pid):  # the workers, reaped by init
        time.sleep(0.05)

    # What the killed run wrote, committed to the manifest or not yet (the next run adopts those shards).
    ds = Dataset.open(str(data))
    n_partial = sum(ds.read_shard("items", k, columns=["id"]).num_rows for k in ds.shard_ids("items"))
    assert 0 < n_partial < N

    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{N - n_partial} new items" in r.stderr

    ids = Dataset.open(str(data)).read_all("items", columns=["id"]).column("id").to_pylist()
    assert len(ids) == N and set(ids) == expected  # same items, no duplicates

    leftovers = [os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs if f.startswith(".tmp-")]
    assert leftovers == []
    # And once more: nothing new.
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "0 new items" in r.stderr, r.stderr

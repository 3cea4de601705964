"""Crash safety of `povid synth`: kill -9 at any moment, SIGTERM / Ctrl-C, two runs at once.

Every test runs `povid synth` as a real subprocess and compares the dataset it ends with against an
uninterrupted run: same pair ids, same rows per output, no duplicate, no unreadable shard visible.
`toy` runs the pipeline with the small stages of synth_toy.py (slowed down so that kills land inside
stages); `real` runs the real stages.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from povid_cli.core.store import Dataset

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SRC = REPO / "examples" / "sample" / "llava.json"
OUTPUTS = ("items", "hallucinated", "distorted", "pairs", "dropped")


def povid(kind: str) -> list[str]:
    if kind == "real":
        return [sys.executable, "-m", "povid_cli"]
    return [sys.executable, str(TESTS / "synth_toy.py")]


def start(kind: str, data: Path, tmp: Path, *extra: str, delay: float = 0.02, **kw) -> subprocess.Popen:
    cfg = tmp / "povid.toml"
    if not cfg.exists():
        cfg.write_text("[ingest]\nshard_size = 4\n")  # 6 shards: many moments to be killed at
    env = {**os.environ, "POVID_NO_PROGRESS": "1", "POVID_TOY_DELAY": str(delay), "PYTHONUNBUFFERED": "1"}
    cmd = povid(kind) + ["synth", str(SRC), "-o", str(data), "--config", str(cfg), "--workers", "2", *extra]
    # Files, not pipes: an orphaned worker holding a pipe open would hang the test instead of failing it.
    n = len(list(tmp.glob("run-*.out")))
    out, err = open(tmp / f"run-{n}.out", "w+"), open(tmp / f"run-{n}.err", "w+")
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, text=True, **kw)
    p.logs = (out, err)
    return p


def finish(p: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    p.wait(timeout=timeout)
    texts = []
    for f in p.logs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return p.returncode, texts[0], texts[1]


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"


def wait_until(cond, timeout: float = 60.0, step: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def check_consistent(data: Path) -> None:
    """What a reader sees at any moment: valid manifest, readable shards, no duplicate ids."""
    if not (data / "manifest.json").exists():
        return
    json.loads((data / "manifest.json").read_text())
    for out in OUTPUTS:
        ids: list[str] = []
        for f in sorted((data / out).glob("part-*.parquet")) if (data / out).is_dir() else []:
            ids += pq.read_table(f, columns=["id"]).column("id").to_pylist()
        assert len(ids) == len(set(ids)), f"duplicate ids in {out}"
    export = data / "export" / "trl"
    if export.exists():  # an export is there complete, or not at all (a training job may be reading it)
        marker = json.loads((export / "povid-export.json").read_text())
        rows = sum(pq.read_metadata(f).num_rows for f in export.glob("train-*.parquet"))
        assert rows == marker["rows"]


def result(data: Path) -> dict:
    ds = Dataset.open(str(data))
    out = {}
    for name in OUTPUTS:
        t = ds.read_all(name, columns=["id"])
        out[name] = sorted(t.column("id").to_pylist()) if t is not None else []
    export = sorted((data / "export" / "trl").glob("train-*.parquet"))
    out["export"] = sorted(i for f in export for i in pq.read_table(f, columns=["id"]).column("id").to_pylist())
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run per pipeline kind, computed once."""
    cache: dict[str, dict] = {}

    def get(kind: str) -> dict:
        if kind not in cache:
            tmp = tmp_path_factory.mktemp(f"ref-{kind}")
            code, out, err = finish(start(kind, tmp / "data", tmp, delay=0))
            assert code == 0, err
            cache[kind] = result(tmp / "data")
            assert cache[kind]["pairs"] and cache[kind]["export"] == cache[kind]["pairs"]
        return cache[kind]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["toy", "real"])
def test_kill_9_at_any_moment_then_resume_gives_the_uninterrupted_result(kind, reference, tmp_path):
    ref = reference(kind)
    data = tmp_path / "data"
    rng = random.Random(8)
    moments = ["items/part-00003.parquet", "hallucinated/part-00001.parquet", "distorted/part-00002.parquet",
               "pairs/part-00000.parquet", "export", None, None, None]
    kills = 0
    for moment in moments:
        p = start(kind, data, tmp_path)
        if moment is not None and not (data / moment).exists():
            wait_until(lambda: (data / moment).exists() or p.poll() is not None)
        else:
            time.sleep(rng.uniform(0.3, 2.5))
        if p.poll() is None:
            workers = children(p.pid)
            p.kill()  # SIGKILL: no handler, no cleanup
            kills += 1
            finish(p)
            # its pool workers die with it (PR_SET_PDEATHSIG) instead of computing on as orphans
            assert wait_until(lambda: not any(alive(w) for w in workers), timeout=10)
        else:
            finish(p)
        check_consistent(data)
    assert kills >= 4  # most moments fell inside a run
    code, out, err = finish(start(kind, data, tmp_path))
    assert code == 0, err
    assert result(data) == ref
    assert not list(data.rglob(".tmp-*")) and not list((data / "export").glob(".old-*"))


@pytest.mark.parametrize("sig, message", [(signal.SIGTERM, "stopped by SIGTERM"), (signal.SIGINT, "interrupted")])
def test_sigterm_and_ctrl_c_stop_cleanly_and_the_next_run_resumes(sig, message, reference, tmp_path):
    ref = reference("toy")
    data = tmp_path / "data"
    p = start("toy", data, tmp_path, delay=0.1, start_new_session=True)
    assert wait_until(lambda: (data / "hallucinated" / "part-00000.parquet").exists(), timeout=120)
    workers = children(p.pid)
    assert workers, "the local executor should run worker processes"
    # Ctrl-C in a terminal reaches the whole process group, workers included
    os.killpg(p.pid, sig) if sig == signal.SIGINT else p.send_signal(sig)
    code, out, err = finish(p, timeout=30)
    assert code == 130 and message in err and "resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert wait_until(lambda: not any(alive(w) for w in workers), timeout=10)
    assert not (data / ".lock").exists()  # released on the way out
    check_consistent(data)
    code, out, err = finish(start("toy", data, tmp_path, delay=0))
    assert code == 0, err
    assert result(data) == ref


def test_two_runs_at_once_one_is_refused_and_the_dataset_is_not_corrupted(reference, tmp_path):
    ref = reference("toy")
    data = tmp_path / "data"
    first = start("toy", data, tmp_path, delay=0.05)
    assert wait_until(lambda: (data / "items").is_dir(), timeout=60)
    second = start("toy", data, tmp_path, delay=0)
    code2, _, err2 = finish(second)
    code1, _, err1 = finish(first)
    assert code1 == 0, err1
    assert code2 == 1 and "is in use by another povid run" in err2 and f"pid {first.pid}" in err2
    assert len(err2.strip().splitlines()) == 1
    assert result(data) == ref


def test_a_stale_lock_of_a_killed_run_is_taken_over(reference, tmp_path):
    data = tmp_path / "data"
    p = start("toy", data, tmp_path, delay=0.05)
    assert wait_until(lambda: (data / "items").is_dir(), timeout=60)
    p.kill()
    finish(p)
    assert (data / ".lock").exists()  # the killed run could not remove it
    assert json.loads((data / ".lock").read_text())["pid"] == p.pid
    code, _, err = finish(start("toy", data, tmp_path, delay=0))
    assert code == 0, err
    assert result(data) == reference("toy")

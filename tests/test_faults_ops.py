"""What goes wrong around the data: a killed export, read-only storage, bad settings, usage errors, a dead
server. Each reproduces a case an attack run found against the first version and shows it fixed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from povid_cli.core.store import Dataset

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "POVID_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}


def povid_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "povid_cli", *map(str, args)]


def povid(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(povid_cmd(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600, **kw)


def export_state(out: Path) -> tuple[str, int] | None:
    """(format, rows) of the complete export at OUT; None when OUT is missing; fails if OUT is half-written."""
    if not out.exists():
        return None
    marker = json.loads((out / "povid-export.json").read_text())
    if marker["format"] == "povid":
        records = json.loads((out / "povid.json").read_text())
        assert all((out / r["image"]).is_file() for r in records)
        return "povid", len(records)
    import pyarrow.parquet as pq

    return "trl", sum(pq.read_metadata(out / f).num_rows for f in marker["files"])


@pytest.mark.slow
def test_a_killed_export_leaves_the_old_or_the_new_export(sample_dir, tmp_path):
    data = tmp_path / "data"
    assert povid("synth", sample_dir / "llava.json", "-o", data, "--export", "none").returncode == 0
    out = tmp_path / "out"
    assert povid("export", data, "-o", out, "--format", "trl").returncode == 0
    old = export_state(out)
    t0 = time.monotonic()
    assert povid("export", data, "-o", out, "--format", "povid").returncode == 0
    full = time.monotonic() - t0
    new = export_state(out)
    assert old != new
    seen = set()
    for i, fraction in enumerate((0.2, 0.4, 0.55, 0.7, 0.8, 0.9, 0.95, 1.0)):
        fmt = "trl" if i % 2 else "povid"  # alternate, so that every kill lands on a real replacement
        p = subprocess.Popen(povid_cmd("export", data, "-o", out, "--format", fmt), cwd=REPO, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * fraction)
        p.send_signal(signal.SIGKILL)
        p.wait()
        state = export_state(out)
        assert state in (old, new), state  # never missing, never half-written
        seen.add(state)
    r = povid("export", data, "-o", out, "--format", "trl")  # and the next export cleans what they left
    assert r.returncode == 0 and export_state(out) == old
    assert sorted(p.name for p in out.parent.iterdir()) == [".out.versions", "data", "out"]
    assert len(list((out.parent / ".out.versions").iterdir())) == 1


def _read_only(path: Path, script: str) -> subprocess.CompletedProcess:
    """Run a shell script with `path` bind-mounted read-only over itself (a private mount namespace)."""
    return subprocess.run(["unshare", "-m", "sh", "-ec", f"mount --bind '{path}' '{path}'; "
                           f"mount -o remount,bind,ro '{path}'; {script}"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_commands_that_only_read_data_work_on_read_only_storage(sample_dir, tmp_path):
    data = tmp_path / "data"
    assert povid("synth", sample_dir / "llava.json", "-o", data, "--limit", "4").returncode == 0
    probe = _read_only(data, f"touch '{data}/x'")
    if "Read-only file system" not in probe.stderr:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()[:200]}")
    py = f"'{sys.executable}' -m povid_cli"
    r = _read_only(data, f"{py} status '{data}'; {py} report '{data}' -o '{tmp_path}/r.html'; "
                         f"{py} export '{data}' -o '{tmp_path}/out' --format trl")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r.html").stat().st_size > 1000 and (tmp_path / "out" / "povid-export.json").exists()
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("toml, message", [
    ("[ingest]\nshard_size = 0\n", "[ingest] shard_size must be at least 1, got 0"),
    ("[ingest]\nshard_size = -3\n", "[ingest] shard_size must be at least 1, got -3"),
    ("[ingest]\nshard_size = true\n", "[ingest] shard_size must be an integer, got True"),
    ('[export]\ndir = ["a"]\n', "[export] dir must be a string, got ['a']"),
    ("[distort]\nmethods = [1, 2]\n", "[distort] methods must be a list of strings, got [1, 2]"),
    ("[ingest]\nsources = [1]\n", "[ingest] sources must be a list of paths, got [1]"),
    ('[hallucinate]\ntemperature = "hot"\n', "[hallucinate] temperature must be a number, got 'hot'"),
])
def test_bad_config_values_are_refused_before_anything_is_written(cli, sample_dir, tmp_path, toml, message):
    cfg = tmp_path / "povid.toml"
    cfg.write_text(toml)
    r = cli(["synth", sample_dir / "llava.json", "-o", tmp_path / "data", "--config", cfg])
    assert r.exit_code == 2 and r.stderr.strip() == f"error: {message}", r.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("args, needle", [
    (["distort", "DATA", "--workers", "0"], "Invalid value for '--workers'"),
    (["distort"], "Missing argument 'DATA'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["filter", "DATA", "--min-words", "lots"], "Invalid value for '--min-words'"),
])
def test_usage_errors_are_one_line(tmp_path, args, needle):
    r = povid(*[tmp_path if a == "DATA" else a for a in args])
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "╭" not in r.stderr


def test_a_decompression_bomb_is_a_failed_row_without_a_warning_on_stderr(tmp_path):
    from test_ingest_bad import png_bomb

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bomb.png").write_bytes(png_bomb(10000, 9500))  # past PIL's warning threshold
    r = povid("ingest", tmp_path / "imgs", "-o", tmp_path / "data", "--workers", "1")
    assert r.returncode == 1 and "image too large" in r.stderr
    assert "DecompressionBombWarning" not in r.stderr and "Warning" not in r.stderr


def test_a_server_that_always_fails_stops_the_stage_early_and_rows_stay_retryable(cli, sample_data):
    with FakeOpenAI() as srv:
        srv.fault("500", times=10**6)
        t0 = time.monotonic()
        r = cli(["hallucinate", sample_data, "--backend", "openai", "--api-base", srv.url, "--max-retries", "5",
                 "--concurrency", "4"])
        seconds = time.monotonic() - t0
        assert r.exit_code == 1, r.output
        assert len(r.stderr.strip().splitlines()) == 1 and srv.url in r.stderr and "20 requests in a row" in r.stderr
        assert "HTTP 500" in r.stderr and seconds < 60 and srv.count < 40
    assert not Dataset.open(str(sample_data)).has("hallucinated")  # nothing committed: the rerun does it all
    with FakeOpenAI() as srv:
        r = cli(["hallucinate", sample_data, "--backend", "openai", "--api-base", srv.url])
        assert r.exit_code == 0, r.output
        assert srv.count == 22

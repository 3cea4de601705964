"""What goes wrong with the data and the process: interrupts, long answers, stray and broken shards.

Each test reproduces a case an attack run found against the first version and shows it fixed:
1. SIGTERM during `filter` lost pairs for good (the interrupt became a failed row);
2. filter was quadratic in answer length;
3. shards without their items shard, copied shards and foreign Parquet files reached the export;
4. a truncated shard made every command fail with a Parquet error and nothing repaired it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from povid_cli.core.schemas import HALLUCINATED
from povid_cli.core.stage import Batch
from povid_cli.core.store import Dataset
from stages.filter import FilterConfig, FilterStage

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "POVID_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
SENTENCE = "A man is ironing on a yellow car. "
LONG_OK = ("--max-repetition", "1")  # the long answers repeat one sentence: keep them anyway


def povid(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "povid_cli", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout, **kw)


def slow_filter_data(make_items, path: Path, n: int = 20, repeat: int = 2500) -> Path:
    """Items with long answers (~85 KB) and a rules hallucination each, in shards of 2: filter takes seconds."""
    items = [{"prompt": f"Describe image {i}.", "chosen": f"Photo {i}. " + SENTENCE * repeat, "objects": ["person", "car"]}
             for i in range(n)]
    data = make_items(items, shard_size=2, path=path)
    ds = Dataset.open(str(data))
    for k in ds.shard_ids("items"):
        rows = []
        for it in ds.read_shard("items", k).to_pylist():
            half = len(it["chosen"]) // 2  # a colour changed and an absent object added, as rules would
            rej = it["chosen"][:half].replace("yellow", "red", 1) + "A fork lies on the car. " + it["chosen"][half:]
            rows.append({"id": f"{it['id']}-h0", "item_id": it["id"], "rejected": rej, "hallucination_types": ["object"],
                         "edits": [], "backend": "rules", "model": None, "prompt_version": "t"})
        ds.commit_shard("hallucinate", "hallucinated", k, pa.Table.from_pylist(rows, schema=HALLUCINATED), f"h{k}",
                        {"items": ds.shard_key("items", k)})
    return data


def pair_ids(data: Path) -> list[str]:
    t = Dataset.open(str(data)).read_all("pairs", columns=["id"])
    return sorted(t.column("id").to_pylist()) if t is not None else []


@pytest.mark.slow
def test_sigterm_during_filter_loses_nothing_and_a_rerun_completes(make_items, tmp_path):
    reference = slow_filter_data(make_items, tmp_path / "ref")
    t0 = time.monotonic()
    r = povid("filter", reference, *LONG_OK)
    full = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    expected = pair_ids(reference)
    assert expected and full > 2, full  # long enough to be interrupted inside, several times

    data = tmp_path / "data"
    shutil.copytree(reference, data)
    shutil.rmtree(data / "pairs"), shutil.rmtree(data / "dropped")
    for fraction in (0.15, 0.3, 0.45, 0.6, 0.8):  # five moments, from start-up to the last shards
        p = subprocess.Popen([sys.executable, "-m", "povid_cli", "filter", str(data), *LONG_OK], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(full * fraction)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
        if p.returncode == 0 or (p.returncode == -signal.SIGTERM and "shard(s) run" in err):
            break  # it had finished (the signal came while the interpreter was already shutting down)
        assert p.returncode == 130, err
        assert len(err.strip().splitlines()) == 1 and ("stopped by SIGTERM" in err or "interrupted" in err), err
        failed = Dataset.open(str(data)).read_all("failed/filter")
        assert failed is None or not any("SIGTERM" in e for e in failed.column("error").to_pylist())
    r = povid("filter", data, *LONG_OK)
    assert r.returncode == 0, r.stderr
    assert pair_ids(data) == expected


def test_a_1mb_answer_filters_in_under_5_seconds():
    chosen = SENTENCE * 30000  # ~1 MB, 240,000 words
    assert len(chosen) >= 1_000_000
    half = len(chosen) // 2  # two hallucinations, far apart: a colour at the start, an object in the middle
    rejected = chosen[:half].replace("yellow", "red", 1) + "A fork lies on the car. " + chosen[half:]
    item = {"id": "i", "prompt": "Describe.", "chosen": chosen, "has_answer": True, "task": "caption",
            "objects": ["person", "car"], "image": None, "rejected": None, "source": "t", "source_id": "1"}
    hal = [{"id": "i-h0", "item_id": "i", "rejected": rejected, "edits": [], "model": None}]
    t0 = time.perf_counter()
    out = FilterStage(FilterConfig(max_repetition=1.0)).process(Batch([item], {"hallucinated": hal}))
    seconds = time.perf_counter() - t0
    assert seconds < 5, seconds
    [pair] = out.outputs["pairs"] or out.outputs["dropped"]
    assert pair["similarity"] > 0.99 and pair["n_edits"] >= 1  # rounded to 4 places: a few edits in 240k words


def test_long_answers_are_diffed_like_short_ones():
    """The long path finds the same edits difflib finds on a short answer repeated."""
    from stages.textsim import LONG, word_diff, words

    short_a = words("A red cup stands on a wooden table next to a knife.")
    short_b = words("A blue cup stands under a wooden table next to a knife and a fork.")
    reps = LONG // len(short_a) + 2
    a, b = short_a * reps, short_a * (reps // 2) + short_b + short_a * (reps - reps // 2 - 1)
    d = word_diff(a, b)
    assert max(len(a), len(b)) > LONG
    assert d.changes() == word_diff(short_a, short_b).changes()


# -- stray and broken shards ------------------------------------------------------------------------
def synth(src, data, *extra):
    return povid("synth", src, "-o", data, "--workers", "2", *extra)


def export_ids(data: Path, out: Path | None = None) -> list[str]:
    import pyarrow.parquet as pq

    files = sorted((out or data / "export" / "trl").glob("train-*.parquet"))
    return sorted(i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist())


@pytest.mark.slow
def test_orphaned_copied_and_foreign_shards_never_reach_the_export(sample_dir, tmp_path):
    cfg = tmp_path / "povid.toml"
    cfg.write_text("[ingest]\nshard_size = 4\n")  # six items shards
    data = tmp_path / "data"
    assert synth(sample_dir / "llava.json", data, "--config", cfg).returncode == 0
    expected = export_ids(data)
    assert len(expected) == len(set(expected)) > 0

    # items deleted, then rebuilt in one shard: the pairs shards of the old items are orphans
    shutil.rmtree(data / "items")
    r = synth(sample_dir / "llava.json", data)
    assert r.returncode == 0, r.stderr
    assert export_ids(data) == expected

    # a copied pairs shard and foreign Parquet files in stage folders
    shutil.copy(data / "pairs" / "part-00000.parquet", data / "pairs" / "part-00009.parquet")
    pa_table = pa.table({"x": [1, 2]})
    import pyarrow.parquet as pq

    pq.write_table(pa_table, data / "pairs" / "part-00007.parquet")
    pq.write_table(pa_table, data / "pairs" / "notes.parquet")
    r = povid("export", data, "-o", tmp_path / "out", "--format", "trl")
    assert r.returncode == 0, r.stderr
    assert export_ids(data, tmp_path / "out") == expected
    r = povid("status", data)
    assert r.returncode == 0 and "not committed" in r.stdout, r.stdout


@pytest.mark.slow
def test_a_truncated_shard_is_named_with_its_repair_and_the_repair_works(sample_dir, tmp_path):
    cfg = tmp_path / "povid.toml"
    cfg.write_text("[ingest]\nshard_size = 8\n")
    data = tmp_path / "data"
    assert synth(sample_dir / "llava.json", data, "--config", cfg).returncode == 0
    expected = export_ids(data)
    shard = data / "items" / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    r = povid("status", data)
    assert r.returncode == 0 and "part-00001.parquet cannot be read" in r.stdout, r.stdout
    for args in (("hallucinate", data), ("export", data, "-o", tmp_path / "out")):
        r = povid(*args)
        assert r.returncode == 1, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "items/part-00001.parquet cannot be read" in r.stderr
        assert "povid ingest" in r.stderr and "Traceback" not in r.stderr

    r = povid("ingest", sample_dir / "llava.json", "-o", data)  # the repair the message names
    assert r.returncode == 0, r.stderr
    assert "8 new items" in r.stderr and (data / "quarantine" / "items" / "part-00001.parquet").exists()
    r = synth(sample_dir / "llava.json", data)
    assert r.returncode == 0, r.stderr
    assert sorted(set(export_ids(data))) == sorted(set(expected)) and len(export_ids(data)) == len(expected)

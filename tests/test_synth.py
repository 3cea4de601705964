"""`povid synth`: the pipeline's mechanics (resume, incremental refresh, config chains, lock, exit codes).

Most tests here use the toy stages of synth_toy.py (fast, and they log which rows they compute);
test_synth_real_stages_end_to_end runs the real stages on the bundled sample.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from povid_cli.core.store import Dataset
from synth_toy import use_toy_stages

OUTPUTS = ("items", "hallucinated", "distorted", "pairs")


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """Synth with the toy stages; returns the path of the log of computed rows."""
    use_toy_stages(monkeypatch)
    log = tmp_path / "computed.log"
    monkeypatch.setenv("POVID_TOY_LOG", str(log))
    return log


def computed(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    lines = [tuple(line.split()) for line in log.read_text().splitlines()]
    log.unlink()
    return lines


def image_folder(root: Path, n: int, start: int = 0) -> Path:
    """An image folder with sidecar answers: img{i}.png + img{i}.txt."""
    from conftest import png_bytes

    root.mkdir(exist_ok=True)
    for i in range(start, start + n):
        (root / f"img{i}.png").write_bytes(png_bytes(((40 * i) % 256, (90 + 7 * i) % 256, 30), size=(32 + i, 24)))
        (root / f"img{i}.txt").write_text(f"A small picture number {i} with a red square and a blue sky.")
    return root


def shard_state(data: Path) -> dict[str, tuple[float, str]]:
    """{relative shard path: (mtime, key)} for every shard of every output."""
    out = {}
    ds = Dataset.open(str(data))
    for name in OUTPUTS + ("dropped",):
        for k in ds.shard_ids(name):
            p = data / name / f"part-{k:05d}.parquet"
            out[f"{name}/{k}"] = (p.stat().st_mtime_ns, ds.shard_key(name, k))
    return out


def read_export(path: Path):
    """The trl export: its train-NNNNN.parquet files (datasets.load_dataset("parquet", data_dir=...) reads the same)."""
    import pyarrow as pa

    return pa.concat_tables(pq.read_table(p) for p in sorted(path.glob("train-*.parquet")))


def synth_args(src, data, *extra):
    return ["synth", src, "-o", data, "--workers", "1", *extra]


def test_synth_runs_every_stage_prints_a_summary_and_records_its_config(cli, toy, sample_dir, tmp_path):
    data = tmp_path / "data"
    r = cli(synth_args(sample_dir / "llava.json", data))
    assert r.exit_code == 0, r.output
    for stage in ("ingest", "hallucinate", "distort", "filter", "export"):
        assert stage in r.stdout
    assert "pairs: text 22" in r.stdout and "sample: skipped" in r.stdout
    ds = Dataset.open(str(data))
    pairs = ds.read_all("pairs")
    assert pairs.num_rows == 22 and len(set(pairs.column("id").to_pylist())) == 22
    cfg = ds.manifest["synth"]["config"]
    assert cfg["hallucinate"]["word"] == "fork" and cfg["export"]["format"] == "trl"
    assert cfg["sources"] == [str(sample_dir / "llava.json")] and cfg["skipped"] == ["sample"]
    assert ds.manifest["synth"]["last_run"]["steps"][1]["tokens"] == 66  # usage summed per stage
    export = read_export(data / "export" / "trl")
    assert export.num_rows == 22 and set(export.column("id").to_pylist()) == set(pairs.column("id").to_pylist())
    assert {s for s, _ in computed(toy)} == {"hallucinate", "distort", "filter"}
    # run again: nothing is computed, nothing is rewritten, the export is left as it is
    before = shard_state(data)
    export_mtime = (data / "export" / "trl" / "train-00000.parquet").stat().st_mtime_ns
    r = cli(synth_args(sample_dir / "llava.json", data))
    assert r.exit_code == 0 and "22 already present" in r.stdout and "unchanged since the last run" in r.stdout
    assert computed(toy) == [] and shard_state(data) == before
    assert (data / "export" / "trl" / "train-00000.parquet").stat().st_mtime_ns == export_mtime


def test_a_folder_that_gained_images_costs_only_the_new_ones(cli, toy, tmp_path):
    src = image_folder(tmp_path / "imgs", 5)
    data = tmp_path / "data"
    assert cli(synth_args(src, data)).exit_code == 0
    first = shard_state(data)
    first_ids = set(Dataset.open(str(data)).read_all("items").column("id").to_pylist())
    computed(toy)

    image_folder(src, 3, start=5)  # cron finds three new photos
    r = cli(synth_args(src, data))
    assert r.exit_code == 0, r.output
    ds = Dataset.open(str(data))
    new_ids = set(ds.read_all("items").column("id").to_pylist()) - first_ids
    assert len(new_ids) == 3
    # every stage computed the new items and only them
    by_stage: dict[str, set] = {}
    for stage, item in computed(toy):
        by_stage.setdefault(stage, set()).add(item)
    assert by_stage == {"hallucinate": new_ids, "distort": new_ids, "filter": new_ids}
    # the shards of the first run are untouched (same bytes on disk, same keys); new shards were added
    after = shard_state(data)
    assert {k: after[k] for k in first} == first
    assert sorted(set(after) - set(first)) == ["distorted/1", "dropped/1", "hallucinated/1", "items/1", "pairs/1"]
    assert ds.read_all("pairs").num_rows == 8
    assert read_export(data / "export" / "trl").num_rows == 8  # the export follows


def test_a_changed_stage_config_reruns_it_and_what_follows_nothing_before(cli, toy, tmp_path):
    src = image_folder(tmp_path / "imgs", 4)
    data = tmp_path / "data"
    cfg = tmp_path / "povid.toml"
    cfg.write_text('[ingest]\nshard_size = 2\n[hallucinate]\nword = "fork"\n')
    assert cli(synth_args(src, data, "--config", cfg)).exit_code == 0
    computed(toy)
    base = shard_state(data)

    cfg.write_text('[ingest]\nshard_size = 2\n[hallucinate]\nword = "spoon"\n')
    assert cli(synth_args(src, data, "--config", cfg)).exit_code == 0
    assert {s for s, _ in computed(toy)} == {"hallucinate", "filter"}
    now = shard_state(data)
    for name, state in base.items():
        changed = now[name] != state
        assert changed == name.startswith(("hallucinated", "pairs", "dropped")), name
    rejected = Dataset.open(str(data)).read_all("pairs").column("rejected").to_pylist()
    assert all(r.endswith("a spoon") for r in rejected)

    # distort's options touch distort only (filter does not read distorted when nothing is sampled)
    base = now
    assert cli(synth_args(src, data, "--config", cfg, "--distort", "blur")).exit_code == 0
    assert {s for s, _ in computed(toy)} == {"distort"}
    now = shard_state(data)
    assert {n for n in base if now[n] != base[n]} == {"distorted/0", "distorted/1"}
    m = Dataset.open(str(data)).manifest["synth"]["config"]
    assert m["distort"]["methods"] == ["blur"] and m["hallucinate"]["word"] == "spoon"


def test_failed_rows_give_exit_1_and_the_rest_is_written(cli, toy, tmp_path):
    src = image_folder(tmp_path / "imgs", 3)
    (src / "img1.txt").write_text("This one will FAIL in the toy hallucinate stage.")
    data = tmp_path / "data"
    r = cli(synth_args(src, data))
    assert r.exit_code == 1
    assert "toy failure" in r.stderr and "1 row(s) failed" in r.stderr and "Traceback" not in r.output
    ds = Dataset.open(str(data))
    assert ds.read_all("pairs").num_rows == 2 and ds.read_all("failed/hallucinate").num_rows == 1
    assert (data / "export" / "trl").is_dir()


@pytest.mark.parametrize("args, message", [
    (["--executor", "spark"], "--executor must be one of local, ray, got 'spark'"),
    (["--export", "csv"], "--export must be one of trl, povid, llava, sharegpt, none, got 'csv'"),
    (["--sample-backend", "vllm"], None),  # fine alone: sampling only starts with --vlm
])
def test_bad_options_are_usage_errors(cli, toy, sample_dir, tmp_path, args, message):
    r = cli(synth_args(sample_dir / "llava.json", tmp_path / "data", *args, "--limit", "2"))
    if message is None:
        assert r.exit_code == 0, r.output
    else:
        assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output
        assert not (tmp_path / "data").exists()  # nothing was created


def test_no_sources_is_a_usage_error(cli, toy, tmp_path):
    r = cli(["synth", "-o", tmp_path / "data"])
    assert r.exit_code == 2 and "give at least one SRC" in r.stderr


def test_sources_can_come_from_povid_toml(cli, toy, tmp_path):
    src = image_folder(tmp_path / "imgs", 2)
    cfg = tmp_path / "povid.toml"
    cfg.write_text(f'[ingest]\nsources = ["{src}"]\n[export]\nformat = "none"\n')
    r = cli(["synth", "-o", tmp_path / "data", "--config", cfg, "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert Dataset.open(str(tmp_path / "data")).read_all("pairs").num_rows == 2
    assert not (tmp_path / "data" / "export").exists()


def test_a_second_run_on_the_same_data_is_refused_while_the_first_holds_it(cli, toy, sample_dir, tmp_path):
    data = tmp_path / "data"
    assert cli(synth_args(sample_dir / "llava.json", data, "--limit", "2")).exit_code == 0
    with Dataset.open(str(data)).lock():
        r = cli(synth_args(sample_dir / "llava.json", data))
    assert r.exit_code == 1 and "is in use by another povid run" in r.stderr
    assert Dataset.open(str(data)).read_all("items").num_rows == 2  # the refused run changed nothing


def test_limit_tries_a_few_items_and_the_full_run_completes_them(cli, toy, sample_dir, tmp_path):
    data = tmp_path / "data"
    r = cli(synth_args(sample_dir / "llava.json", data, "--limit", "3"))
    assert r.exit_code == 0 and "pairs: text 3" in r.stdout
    r = cli(synth_args(sample_dir / "llava.json", data))
    assert r.exit_code == 0 and "pairs: text 22" in r.stdout


def test_export_leftovers_of_a_killed_run_are_cleaned(cli, toy, sample_dir, tmp_path):
    data = tmp_path / "data"
    assert cli(synth_args(sample_dir / "llava.json", data, "--limit", "2")).exit_code == 0
    half = data / "export" / ".tmp-0123abcd-trl"  # what a run killed inside the export leaves
    half.mkdir()
    (half / "train-00000.parquet").write_bytes(b"half")
    (data / "export" / ".old-4567cdef-trl").mkdir()
    (data / "export" / ".trl.versions" / "89abcdef").mkdir()  # a version folder a killed export built
    assert cli(synth_args(sample_dir / "llava.json", data, "--limit", "2")).exit_code == 0
    # OUT is a link to its one current version folder (swapped in atomically); nothing else is left
    assert sorted(os.listdir(data / "export")) == [".trl.versions", "trl"]
    assert os.listdir(data / "export" / ".trl.versions") == [os.path.basename(os.readlink(data / "export" / "trl"))]


# -- the real stages -------------------------------------------------------------------------------
def test_synth_real_stages_end_to_end(cli, sample_dir, tmp_path):
    data = tmp_path / "data"
    r = cli(synth_args(sample_dir / "llava.json", data, "--workers", "2"))
    assert r.exit_code in (0, 1), r.output
    ds = Dataset.open(str(data))
    assert ds.read_all("items").num_rows == 22
    assert ds.read_all("hallucinated").num_rows + (ds.read_all("failed/hallucinate") or []).__len__() >= 22
    assert ds.read_all("distorted").num_rows >= 22
    pairs = ds.read_all("pairs")
    assert pairs is not None and pairs.num_rows >= 15  # filter keeps most text pairs
    assert set(pairs.column("kind").to_pylist()) == {"text"}
    kept = pairs.num_rows
    dropped = ds.read_all("dropped")
    assert f"pairs: text {kept}" in r.stdout
    assert kept + (dropped.num_rows if dropped is not None else 0) >= 22
    m = json.loads((data / "manifest.json").read_text())
    assert set(m["stages"]) >= {"ingest", "hallucinate", "distort", "filter"}
    assert read_export(data / "export" / "trl").num_rows == kept
    again = cli(synth_args(sample_dir / "llava.json", data))
    assert again.exit_code == r.exit_code and "0 run/1 done" in again.stdout


def test_the_offline_synth_path_imports_no_torch(tmp_path, sample_dir):
    """The light core install (`pip install -e .`, no torch) must run the whole default pipeline."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from povid_cli.cli import app\n"
        f"try:\n    app(['synth', {str(sample_dir / 'llava.json')!r}, '-o', {str(tmp_path / 'data')!r}, '--limit', '3'])\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'vllm', 'ray', 'trl') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "POVID_NO_PROGRESS": "1"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "export" / "trl").is_dir()


@pytest.mark.train
def test_synth_with_a_vlm_samples_it_and_a_distort_change_reruns_distort_sample_filter(cli, tiny_vlm, sample_dir, tmp_path):
    model = tiny_vlm("qwen2_vl")
    cfg = tmp_path / "povid.toml"
    cfg.write_text("[sample]\nmax_tokens = 6\nbatch_size = 3\n")
    data = tmp_path / "data"
    args = ["synth", sample_dir / "llava.json", "-o", data, "--config", cfg, "--limit", "3", "--workers", "1",
            "--vlm", model, "--sample-backend", "transformers"]
    r = cli(args)
    assert r.exit_code == 0, r.output
    ds = Dataset.open(str(data))
    sampled = ds.read_all("sampled")
    assert sampled.num_rows == 3 and "sample: skipped" not in r.stdout
    kinds = [p["kind"] for p in ds.read_all("pairs", columns=["kind"]).to_pylist()]
    dropped = ds.read_all("dropped", columns=["kind"])
    image_rows = kinds.count("image") + (dropped.column("kind").to_pylist().count("image") if dropped is not None else 0)
    assert kinds.count("text") >= 1 and image_rows == 3  # every sampled answer became a pair or a drop
    assert ds.manifest["synth"]["config"]["sample"]["model"] == str(model)
    before = shard_state(data)
    sampled_mtime = (data / "sampled" / "part-00000.parquet").stat().st_mtime_ns

    r = cli(args + ["--distort", "blur"])
    assert r.exit_code == 0, r.output
    after = shard_state(data)
    changed = {n.split("/")[0] for n in before if after.get(n) != before[n]}
    assert {"distorted", "pairs"} <= changed <= {"distorted", "pairs", "dropped"}
    assert (data / "sampled" / "part-00000.parquet").stat().st_mtime_ns != sampled_mtime  # sample re-ran
    assert after["items/0"] == before["items/0"] and after["hallucinated/0"] == before["hallucinated/0"]


def test_real_stages_a_refresh_adds_new_shards_and_rewrites_none(cli, sample_dir, tmp_path):
    data = tmp_path / "data"
    src = sample_dir / "llava.json"
    assert cli(synth_args(src, data, "--limit", "10")).exit_code == 0  # yesterday: 10 items
    first = shard_state(data)
    assert {n.split("/")[0] for n in first} >= {"items", "hallucinated", "distorted", "pairs"}
    r = cli(synth_args(src, data))  # today: the rest
    assert r.exit_code == 0, r.output
    after = shard_state(data)
    assert {k: after[k] for k in first} == first  # nothing of yesterday's was rewritten
    new = {n.split("/")[0] for n in set(after) - set(first)}
    assert new >= {"items", "hallucinated", "distorted", "pairs"}
    ds = Dataset.open(str(data))
    assert ds.read_all("items").num_rows == 22 and ds.read_all("hallucinated").num_rows == 22
    pairs = ds.read_all("pairs").column("id").to_pylist()
    assert read_export(data / "export" / "trl").column("id").to_pylist() == pairs

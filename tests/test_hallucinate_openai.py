"""`povid hallucinate --backend openai` against the project's fault-injecting OpenAI-compatible server."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from fake_openai import FakeOpenAI
from povid_cli.core.store import Dataset

SECRET = "sk-test-DO-NOT-LEAK-0123456789"


def rewrite(body: dict) -> str:
    """A plausible hallucinating model: takes the answer out of the prompt and adds a fork to it."""
    from fake_openai import echo

    return echo(body).rstrip(".") + ", and a fork lies next to it."


def structured_rewrite(body: dict) -> str:
    from fake_openai import echo

    answer = echo(body)
    return json.dumps({"rejected": "Two forks. " + answer, "edits": [{"from": "", "to": "Two forks.", "type": "object"}]})


@pytest.fixture
def server():
    with FakeOpenAI(reply=rewrite, latency=0.01) as srv:
        yield srv


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("POVID_TEST_KEY", SECRET)
    return "POVID_TEST_KEY"


def run(cli, data, srv, *extra):
    return cli(["hallucinate", data, "--backend", "openai", "--model", "fake-model", "--api-base", srv.url,
                "--max-retries", "2", "--timeout", "1", *extra])


def text_of(r) -> str:
    return r.output  # stdout and stderr, interleaved


def outcome(data) -> tuple[dict[str, dict], dict[str, dict]]:
    ds = Dataset.open(str(data))
    done = {r["item_id"]: r for r in ds.read_all("hallucinated").to_pylist()} if ds.has("hallucinated") else {}
    fdir = data / "failed" / "hallucinate"
    failed = {r["id"]: r for r in pq.read_table(str(fdir)).to_pylist()} if fdir.exists() and any(fdir.iterdir()) else {}
    return done, failed


def test_faults_end_in_failed_with_reasons_and_a_rerun_completes_them(cli, sample_data, server, key):
    items = {r["id"]: r for r in Dataset.open(str(sample_data)).read_all("items").to_pylist()}
    server.fault("429", times=2, match="There is one helmet", retry_after=0.05)  # retried: ends in hallucinated
    server.fault("503", times=1, match="The horse is facing")
    server.fault("500", times=3, match="tabby cat with green eyes")  # more than --max-retries 2 allows
    server.fault("hang", times=3, match="wooden pier", hang=3)       # past --timeout 1, every attempt
    server.fault("garbage", times=3, match="Hubble")                  # (not in any prompt: never used)
    server.fault("garbage", times=3, match="deep field image")
    server.fault("empty", times=1, match="espresso with crema sits")
    server.fault("refusal", times=1, match="black silhouette")
    server.fault("echo", times=1, match="rocket stands upright")
    r = run(cli, sample_data, server, "--api-key-env", key, "-vv")
    assert r.exit_code == 1
    done, failed = outcome(sample_data)
    assert set(done) | set(failed) == set(items) and not set(done) & set(failed)  # every item lands somewhere
    by_reason = {items[i]["chosen"][:20]: (f["kind"], f["retryable"], f["error"]) for i, f in failed.items()}
    assert by_reason["A close-up of a tabb"][:2] == ("transient", True) and "HTTP 500" in by_reason["A close-up of a tabb"][2]
    assert by_reason["A long wooden pier s"][:2] == ("transient", True) and "timed out" in by_reason["A long wooden pier s"][2]
    assert by_reason["A deep field image o"][:2] == ("transient", True)
    assert by_reason["A cup of espresso wi"][:2] == ("empty", True)
    assert by_reason["A black silhouette o"][:2] == ("refusal", False)
    assert by_reason["A rocket stands upri"][:2] == ("identical", False)
    assert len(failed) == 6
    for row in done.values():
        assert row["rejected"].endswith("and a fork lies next to it.") and row["model"] == "fake-model"
        assert "object" in row["hallucination_types"] and row["backend"] == "openai"
    usage = json.loads((sample_data / "manifest.json").read_text())["stages"]["hallucinate"]["usage"]
    assert usage["requests"] == server.count and usage["retries"] >= 3 and usage["completion_tokens"] > 0
    # the key went to the server and nowhere else
    assert all(h == f"Bearer {SECRET}" for h in server.auth_headers)
    everything = text_of(r) + "".join(p.read_text(errors="replace") for p in sample_data.rglob("*.json"))
    everything += "".join(str(v) for f in failed.values() for v in f.values())
    assert SECRET not in everything and "DO-NOT-LEAK" not in everything

    # run again: the transient ones are asked again, the others come from the cache or stay failed
    before = server.count
    r = run(cli, sample_data, server, "--api-key-env", key)
    assert r.exit_code == 1  # the refusal and the echo stay failed (not retryable)
    done2, failed2 = outcome(sample_data)
    assert {items[i]["chosen"][:20] for i in failed2} == {"A black silhouette o", "A rocket stands upri"}
    assert len(done2) == 20 and server.count - before == 4  # tabby, pier, deep field, espresso: nothing else
    texts = [json.dumps(b) for b in server.bodies[before:]]
    assert not any("There is one helmet" in t for t in texts)


def test_deleting_the_output_and_rerunning_sends_no_request(cli, sample_data, server):
    assert run(cli, sample_data, server).exit_code == 0
    first = {r["id"]: r["rejected"] for r in Dataset.open(str(sample_data)).read_all("hallucinated").to_pylist()}
    assert server.count == 22 and (sample_data / "cache" / "hallucinate").is_dir()
    shutil.rmtree(sample_data / "hallucinated")
    r = run(cli, sample_data, server, "--concurrency", "3")  # a speed setting: same config hash
    assert r.exit_code == 0, text_of(r)
    assert server.count == 22
    assert {r["id"]: r["rejected"] for r in Dataset.open(str(sample_data)).read_all("hallucinated").to_pylist()} == first
    usage = json.loads((sample_data / "manifest.json").read_text())["stages"]["hallucinate"]["usage"]
    assert usage["cached"] == 22


def test_structured_mode_and_send_image(cli, sample_data):
    with FakeOpenAI(reply=structured_rewrite) as srv:
        srv.fault("text", times=1, match="black silhouette", text="Sure! Here it is: not json")
        r = run(cli, sample_data, srv, "--structured", "--send-image", "--limit", "6")
        body = srv.bodies[0]
    assert body["response_format"] == {"type": "json_object"}
    parts = body["messages"][0]["content"]
    assert parts[1]["type"] == "image_url" and parts[1]["image_url"]["url"].startswith("data:image/")
    done, failed = outcome(sample_data)
    assert len(done) + len(failed) == 6
    for row in done.values():
        assert row["rejected"].startswith("Two forks. ") and row["edits"] == [{"from": "", "to": "Two forks.", "type": "object"}]
        assert row["prompt_version"].endswith("+json")
    assert r.exit_code == (1 if failed else 0)


def test_unparseable_structured_answer_is_a_retryable_failure(cli, make_items):
    data = make_items([{"chosen": "A black silhouette of a horse."}])
    with FakeOpenAI(reply=lambda b: "Sure! Here it is: not json") as srv:
        r = run(cli, data, srv, "--structured")
        assert r.exit_code == 1
        _, failed = outcome(data)
        (f,) = failed.values()
        assert f["kind"] == "unparseable" and f["retryable"]
        srv.reply = structured_rewrite  # the model behaves now: the next run asks again, not the cache
        assert run(cli, data, srv, "--structured").exit_code == 0
        assert srv.count == 2


def test_bad_key_stops_with_one_line_without_the_key(cli, sample_data, key):
    with FakeOpenAI(api_key="sk-the-right-one") as srv:
        r = run(cli, sample_data, srv, "--api-key-env", key)
    assert r.exit_code != 0
    out = text_of(r)
    assert "401" in out
    assert SECRET not in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out


def test_missing_key_for_openai_is_a_clear_error(cli, sample_data, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    r = cli(["hallucinate", sample_data, "--backend", "openai"])
    assert r.exit_code == 1 and "OPENAI_API_KEY" in text_of(r)


def test_n_answers_per_item_from_one_request(cli, make_items, server):
    data = make_items([{"chosen": "A red cup sits on a table."}, {"chosen": "A dog runs on the grass."}])
    assert run(cli, data, server, "--n", "3", "--temperature", "1.0").exit_code == 0
    rows = Dataset.open(str(data)).read_all("hallucinated").to_pylist()
    assert sorted(r["id"][-3:] for r in rows) == ["-h0", "-h0", "-h1", "-h1", "-h2", "-h2"]
    assert server.count == 2 and all(b["n"] == 3 for b in server.bodies)

"""The shared OpenAI-compatible client against the fault-injecting loopback server (tests/fake_openai.py)."""

from __future__ import annotations

import time

import pytest

from fake_openai import FakeOpenAI
from povid_cli.backends.openai_client import APIConfig, ChatClient, ChatRequest, ChatResponse, is_refusal
from povid_cli.core.errors import PovidError, RowError


def req(text: str, **params) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}], params)


def fast(url: str, **kw) -> APIConfig:
    kw = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 2.0, **kw}
    return APIConfig(api_base=url, **kw)


@pytest.fixture
def server():
    with FakeOpenAI() as srv:
        yield srv


def test_answers_in_order_with_usage(server):
    client = ChatClient(fast(server.url), "fake-model")
    out = client.run([req(f"question {i}") for i in range(5)])
    assert [r.texts[0] for r in out] == [f"FAKE REWRITE: question {i}" for i in range(5)]
    assert all(isinstance(r, ChatResponse) and not r.cached and r.finish_reasons == ["stop"] for r in out)
    assert client.usage["requests"] == 5 and client.usage["completion_tokens"] == 5 * 4
    assert client.usage["prompt_tokens"] > 0 and client.usage["cached"] == 0


def test_n_choices(server):
    (r,) = ChatClient(fast(server.url), "m").run([req("hi", n=3, temperature=1.0)])
    assert len(r.texts) == 3 and len(r.finish_reasons) == 3


def test_retries_transient_faults_and_honours_retry_after(server):
    server.fault("429", times=1, retry_after=0.6)
    server.fault("503", times=1)
    server.fault("garbage", times=1)
    client = ChatClient(fast(server.url, concurrency=1), "m")
    t0 = time.monotonic()
    (r,) = client.run([req("hello")])
    assert isinstance(r, ChatResponse) and r.texts == ["FAKE REWRITE: hello"]
    assert time.monotonic() - t0 >= 0.6  # waited what Retry-After asked, not the tiny backoff
    assert server.count == 4 and client.usage["retries"] == 3 and client.usage["requests"] == 4


def test_hang_times_out_then_retries(server):
    server.fault("hang", times=1, hang=5)
    client = ChatClient(fast(server.url, timeout=0.5), "m")
    t0 = time.monotonic()
    (r,) = client.run([req("slow")])
    assert isinstance(r, ChatResponse) and time.monotonic() - t0 < 3


def test_gives_up_after_max_retries_with_retryable_row_error(server):
    server.fault("500", times=10, match="doomed")
    client = ChatClient(fast(server.url, max_retries=2), "m")
    ok, bad = client.run([req("fine"), req("doomed")])
    assert isinstance(ok, ChatResponse)
    assert isinstance(bad, RowError) and bad.retryable and "HTTP 500" in str(bad) and "3 attempt" in str(bad)
    assert server.count == 1 + 3 and client.usage["failed_requests"] == 1


def test_4xx_is_not_retried(server):
    server.fault("400", times=5)
    client = ChatClient(fast(server.url), "m")
    (r,) = client.run([req("bad")])
    assert isinstance(r, RowError) and not r.retryable and "HTTP 400" in str(r)
    assert server.count == 1


def test_bad_key_stops_the_run_and_never_shows_the_key(monkeypatch):
    monkeypatch.setenv("POVID_TEST_KEY", "sk-test-SECRET123456")
    with FakeOpenAI(api_key="sk-other") as srv:
        client = ChatClient(fast(srv.url, api_key_env="POVID_TEST_KEY"), "m")
        with pytest.raises(PovidError) as e:
            client.run([req("x")])
        assert "401" in str(e.value) and "SECRET" not in str(e.value) and "SECRET" not in repr(client)
        assert srv.auth_headers == ["Bearer sk-test-SECRET123456"]  # it was sent, just never shown


def test_local_server_needs_no_key(monkeypatch, server):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (r,) = ChatClient(fast(server.url), "m").run([req("x")])
    assert isinstance(r, ChatResponse) and server.auth_headers == ["Bearer EMPTY"]


def test_openai_without_key_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(PovidError, match="OPENAI_API_KEY"):
        ChatClient(APIConfig(), "gpt-4o-mini")


def test_disk_cache_serves_repeats_across_clients(server, tmp_path):
    cfg = fast(server.url, cache_dir=str(tmp_path / "cache"))
    reqs = [req(f"q{i}", temperature=0.0) for i in range(4)]
    first = ChatClient(cfg, "m").run(reqs)
    assert server.count == 4
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 4 and all(f.parent.parent.parent == tmp_path / "cache" for f in files)
    again = ChatClient(cfg, "m")
    second = again.run(reqs + [req("q0", temperature=0.5)])  # other params: another key
    assert server.count == 5 and again.usage["cached"] == 4 and again.usage["requests"] == 1
    assert [r.texts for r in second[:4]] == [r.texts for r in first] and all(r.cached for r in second[:4])
    ChatClient(cfg, "other-model").run(reqs[:1])  # the model is part of the key
    assert server.count == 6


def test_failures_are_not_cached(server, tmp_path):
    server.fault("400", times=1)
    cfg = fast(server.url, cache_dir=str(tmp_path / "cache"))
    (r,) = ChatClient(cfg, "m").run([req("x")])
    assert isinstance(r, RowError)
    (r,) = ChatClient(cfg, "m").run([req("x")])
    assert isinstance(r, ChatResponse) and server.count == 2


def test_concurrency_is_bounded_and_used():
    with FakeOpenAI(latency=0.2) as srv:
        client = ChatClient(fast(srv.url, concurrency=8), "m")
        t0 = time.monotonic()
        out = client.run([req(f"q{i}") for i in range(32)])
        took = time.monotonic() - t0
    assert all(isinstance(r, ChatResponse) for r in out)
    assert srv.max_in_flight == 8
    assert took < 32 * 0.2 / 8 * 2  # 0.8 s ideal; far from the 6.4 s of one at a time


def test_rpm_limit_spaces_requests(server):
    client = ChatClient(fast(server.url, rpm=600), "m")  # one every 0.1 s
    t0 = time.monotonic()
    client.run([req(f"q{i}") for i in range(6)])
    assert time.monotonic() - t0 >= 0.5


def test_refusal_detection():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("  I cannot describe this image.")
    assert is_refusal("Sorry, I can\u2019t do that")
    assert not is_refusal("A man is sorry to see the dog leave.")


def test_cache_writes_are_atomic_under_concurrent_writers(tmp_path):
    import threading

    from povid_cli.backends.openai_client import ResponseCache

    cache = ResponseCache(tmp_path)
    key = "ab" * 32
    seen: list = []

    def write(i: int) -> None:
        for _ in range(20):
            cache.put(key, ChatResponse([f"answer {i} " * 200], ["stop"], {"completion_tokens": i}))
            seen.append(cache.get(key))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None and r.cached and r.texts[0].startswith("answer ") for r in seen)  # never a torn file
    assert [p.name for p in (tmp_path / "ab" / "ab").iterdir()] == [f"{key}.json"]  # no temp files left


def test_run_works_inside_a_running_event_loop(server):
    import asyncio

    async def notebook_cell():
        return ChatClient(fast(server.url), "m").run([req("from a notebook")])

    (r,) = asyncio.run(notebook_cell())
    assert r.texts == ["FAKE REWRITE: from a notebook"]


def test_identical_requests_in_one_run_are_sent_once(server):
    client = ChatClient(fast(server.url), "m")
    out = client.run([req("same"), req("other"), req("same")])
    assert server.count == 2 and out[0].texts == out[2].texts == ["FAKE REWRITE: same"]


def test_retry_after_pauses_every_request(server):
    server.fault("429", times=1, match="first", retry_after=0.5)
    client = ChatClient(fast(server.url, concurrency=2), "m")
    t0 = time.monotonic()
    client.run([req("first"), req("second"), req("third")])
    arrivals = {b["messages"][0]["content"]: t - t0 for b, t in zip(server.bodies, server.arrivals)}
    assert server.count == 4
    assert arrivals["second"] < 0.4 and arrivals["third"] >= 0.45  # third was free to go, but waited with the rest

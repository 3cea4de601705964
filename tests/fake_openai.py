"""A small OpenAI-compatible server on 127.0.0.1 with scripted faults, for tests and benchmarks (aiohttp).

    with FakeOpenAI(latency=0.05) as srv:             # srv.url == "http://127.0.0.1:PORT/v1"
        srv.fault("429", times=2, retry_after=0.1)     # the next two requests get 429 + Retry-After
        srv.fault("garbage", match="zebra")            # the next request whose body mentions "zebra"
        ... point a client at srv.url ...
        assert srv.count == 4                          # chat requests received (faulty ones included)

It speaks `POST /v1/chat/completions` and `GET /v1/models`. Fault kinds:
  429 (with Retry-After), 500, 503, 400, 401, hang (sleep `hang` seconds, past the client's timeout),
  garbage (200 with a body that is not JSON), empty (content ""), refusal ("I'm sorry, ..."),
  echo (returns the input unchanged: the text after "Correct answer:", else the last user message),
  text (returns `text`).
Faults are checked in the order added; each applies to `times` requests (whose raw body contains
`match`, when given). Without a fault, `reply(body) -> str` answers (default: a fixed rewrite of the
last user message). `n` choices are returned when the request asks for n. With `api_key` set, requests
must carry that bearer token (else 401), and `auth_headers` records what was sent. `bodies`/`arrivals`,
`max_in_flight`, `connections`, `first_request_at`/`last_response_at` tell what the client did.

Run it by hand: python tests/fake_openai.py --port 8011 --latency 0.2
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


@dataclass
class Fault:
    kind: str
    times: int = 1
    match: str | None = None
    retry_after: float | None = None
    hang: float = 30.0
    text: str = ""


def last_user_text(body: dict) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):
                return " ".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
            return str(c or "")
    return ""


def echo(body: dict) -> str:
    """The input handed back: the text after "Correct answer:" when the prompt has one, else the user turn."""
    text = last_user_text(body)
    m = re.search(r"Correct answer:\s*(.*?)(?:\n\n|$)", text, re.DOTALL)
    return m.group(1).strip() if m else text


def default_reply(body: dict) -> str:
    return "FAKE REWRITE: " + last_user_text(body)[-200:]


class FakeOpenAI:
    """The server: an aiohttp app on its own event loop in a background thread (one loop, no thread per
    connection, so it keeps up with hundreds of requests in flight on a small machine)."""

    def __init__(self, latency: float = 0.0, reply: Callable[[dict], str] | None = None,
                 model: str = "fake-model", api_key: str | None = None, port: int = 0):
        self.latency = latency
        self.reply = reply or default_reply
        self.model = model
        self.api_key = api_key
        self.faults: list[Fault] = []
        self.bodies: list[dict] = []        # every chat request body received, in arrival order
        self.arrivals: list[float] = []     # time.monotonic() of each, same order
        self.auth_headers: list[str] = []
        self.first_request_at: float | None = None  # time.monotonic() of the first chat request received
        self.last_response_at: float | None = None  # ... and of the last answer sent (for throughput)
        self.in_flight = 0
        self.max_in_flight = 0
        self.peers: set = set()             # client (host, port) pairs: one per TCP connection
        self.dropped = 0                    # requests whose client hung up before sending the whole body
        self.lock = threading.Lock()
        self._want_port = port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._port is not None, "start() the server first"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.bodies)

    @property
    def connections(self) -> int:
        with self.lock:
            return len(self.peers)

    def fault(self, kind: str, times: int = 1, match: str | None = None, **kw) -> Fault:
        f = Fault(kind, times, match, **kw)
        with self.lock:
            self.faults.append(f)
        return f

    def reset(self) -> None:
        with self.lock:
            self.bodies.clear()
            self.arrivals.clear()
            self.faults.clear()
            self.auth_headers.clear()
            self.peers.clear()
            self.max_in_flight = 0
            self.first_request_at = self.last_response_at = None

    def start(self) -> "FakeOpenAI":
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            from aiohttp import web

            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self._stopping = asyncio.Event()
                app = web.Application(client_max_size=64 * 1024 * 1024)
                app.router.add_route("*", "/{tail:.*}", self._handle)
                self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, "127.0.0.1", self._want_port, backlog=512)
                loop.run_until_complete(site.start())
                self._port = self._runner.addresses[0][1]
            except BaseException as e:  # noqa: BLE001 - reported by start()
                errors.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is None or not self._loop.is_running():
            return

        async def shutdown() -> None:
            self._stopping.set()  # hanging handlers return now
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------------------------------
    def _take_fault(self, raw: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.times > 0 and (f.match is None or f.match in raw):
                    f.times -= 1
                    return f
        return None

    async def _handle(self, request):
        from aiohttp import web

        path = request.path.rstrip("/")
        if request.method == "GET" and path.endswith("/models"):
            return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]})
        if request.method != "POST" or not path.endswith("/chat/completions"):
            return web.json_response({"error": {"message": "not found"}}, status=404)
        try:
            raw = (await request.read()).decode("utf-8", "replace")
        except ConnectionError:  # the client gave up mid-request (a timeout, a cancelled run): nothing to answer
            self.dropped += 1
            return web.Response(status=499)
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        with self.lock:
            now = time.monotonic()
            if self.first_request_at is None:
                self.first_request_at = now
            self.bodies.append(body)
            self.arrivals.append(now)
            self.auth_headers.append(request.headers.get("Authorization", ""))
            self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, body, raw)
        finally:
            with self.lock:
                self.in_flight -= 1
                self.last_response_at = time.monotonic()

    async def _answer(self, request, body: dict, raw: str):
        from aiohttp import web

        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
                                     status=401)
        if self.latency:
            await asyncio.sleep(self.latency)
        f = self._take_fault(raw)
        kind = f.kind if f else None
        if kind in ("429", "500", "502", "503", "400", "401", "404"):
            headers = {"Retry-After": f"{f.retry_after:g}"} if f.retry_after is not None else None
            return web.json_response({"error": {"message": f"scripted {kind}", "code": kind}}, status=int(kind),
                                     headers=headers)
        if kind == "hang":
            try:
                await asyncio.wait_for(self._stopping.wait(), f.hang)
            except asyncio.TimeoutError:
                pass
            return web.json_response(self._completion(body, "too late"))
        if kind == "garbage":
            return web.Response(body=b"<html>upstream hiccup {not json", content_type="application/json")
        text = {"empty": "", "refusal": REFUSAL_TEXT, "echo": echo(body),
                "text": f.text if f else ""}.get(kind) if kind else None
        if text is None:
            text = self.reply(body)
        return web.json_response(self._completion(body, text))

    def _completion(self, body: dict, text: str) -> dict:
        n = int(body.get("n") or 1)
        prompt_tokens = sum(len(json.dumps(m.get("content")).split()) for m in body.get("messages") or [])
        return {
            "id": f"chatcmpl-{self.count}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        for i in range(n)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n * len(text.split()),
                      "total_tokens": prompt_tokens + n * len(text.split())},
        }


if __name__ == "__main__":  # pragma: no cover - manual use
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--latency", type=float, default=0.0)
    a = ap.parse_args()
    s = FakeOpenAI(latency=a.latency, port=a.port).start()
    print(s.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        s.stop()

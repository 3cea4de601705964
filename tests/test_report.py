"""`povid report`: one self-contained HTML page; checked as text and in a real headless chromium."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import pyarrow as pa
import pytest
from conftest import png_bytes
from test_filter import CAT, COFFEE, IRONING, item_ids, write_hallucinated, write_sampled

from povid_cli.core.schemas import DISTORTED
from povid_cli.core.store import Dataset

EVIL = '<script>alert("x")</script> & "quotes"'
GREEN = (0, 200, 0)
MAGENTA = (230, 0, 230)


@pytest.fixture
def filtered(make_items, cli):
    """Text pairs, image pairs (with a distorted image) and dropped rows of four drop reasons."""
    data = make_items([{"chosen": CAT, "image_bytes": png_bytes(GREEN, (120, 90))},
                       {"chosen": COFFEE, "prompt": f"What is this? {EVIL}"}, {"chosen": IRONING}])
    a, b, c = item_ids(data)
    write_hallucinated(data, 0, [(a, CAT.replace("to the side", "at a dog on the side")),
                                 (b, COFFEE.replace("spoon", "fork") + " " + EVIL), (c, IRONING),
                                 (c, "I'm sorry, I can't see the image."), (a, CAT.replace("to the side", "at a dog on the side"))])
    write_sampled(data, 0, [{"item_id": a, "responses": ["A dog sleeps on a sofa next to a ball.", "A tabby cat."]}])
    ds = Dataset.open(str(data))
    ds.commit_shard("distort", "distorted", 0, pa.Table.from_pylist([{
        "id": f"{a}-diffusion", "item_id": a, "variant": "diffusion", "image": {"bytes": png_bytes(MAGENTA, (120, 90)), "path": None},
        "method": "diffusion", "params": "{}", "seed": 0}], schema=DISTORTED), "d0")
    r = cli(["filter", data])
    assert r.exit_code == 0, r.output
    return data


def test_report_is_one_escaped_self_contained_file(filtered, cli, tmp_path):
    ds = Dataset.open(str(filtered))  # what an API-backed hallucinate run records in the manifest
    ds.stage_record("hallucinate")["usage"] = {"requests": 3, "prompt_tokens": 3000, "completion_tokens": 900,
                                                "cached": 1, "cost_usd": 0.00099}
    ds.save_manifest()
    out = tmp_path / "report.html"
    r = cli(["report", filtered, "-o", out])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\((https?:)?//|@import""", page)  # nothing fetched
    assert page.count('<article class="pair"') == 3 + 4  # 3 kept, 4 dropped
    assert len(re.findall(r"\.im-[0-9a-f]{12}\{background-image:url\(data:image/jpeg;base64,", page)) == 4  # 3 items + 1 distorted
    assert 'data-kind="image"' in page and "distorted (diffusion)" in page
    assert "<mark>fork </mark>" in page and "<del>spoon </del>" in page  # the word diff, both sides
    for reason in ("identical", "refusal", "duplicate", "too_short"):
        assert f'<option value="{reason}">' in page
    assert "<tr><th>hallucinate</th><td>3</td><td>1</td><td>3,000</td><td>900</td><td>0.0010</td></tr>" in page
    assert re.search(r'3 <small>items</small>.*?3 <small>pairs kept</small>.*?4 <small>dropped', page, re.S)

    r = cli(["report", filtered, "-o", out, "--limit", "2", "--no-dropped"])
    assert r.exit_code == 0, r.output
    assert re.findall(r'data-kind="(\w+)" data-status', out.read_text()) == ["text", "image"]  # round-robin


def test_report_thumbnails_keep_the_file_small(sample_data, cli, tmp_path):
    assert cli(["hallucinate", sample_data]).exit_code == 0
    assert cli(["filter", sample_data]).exit_code == 0
    out = tmp_path / "r.html"
    r = cli(["report", sample_data, "-o", out, "--thumb-size", "160"])
    assert r.exit_code == 0, r.output
    items = Dataset.open(str(sample_data)).read_all("items", columns=["image"]).column("image").to_pylist()
    originals = sum(len(i["bytes"]) for i in {i["bytes"]: i for i in items}.values())
    assert out.stat().st_size < originals / 4, (out.stat().st_size, originals)


def test_report_refuses_a_folder_and_a_non_dataset(filtered, cli, tmp_path):
    r = cli(["report", filtered, "-o", tmp_path])
    assert r.exit_code == 1 and "is a folder" in r.output
    r = cli(["report", tmp_path / "nope", "-o", tmp_path / "x.html"])
    assert r.exit_code == 1 and "does not exist" in r.output


# -- in a real browser -------------------------------------------------------------------------------------

def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("chromium is not installed: `make browser-deps` (as root) installs Debian's chromium")


def _chrome(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chrome-profile"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _visible(dom: str) -> list[tuple[str, str, str]]:
    """(kind, status, reason) of the cards the page's own filter left visible."""
    cards = re.findall(r'<article class="([^"]*)" data-kind="([^"]*)" data-status="([^"]*)" data-reason="([^"]*)"', dom)
    return [(k, s, r) for cls, k, s, r in cards if "hidden" not in cls.split()]


@pytest.mark.browser
def test_report_renders_and_filters_in_headless_chromium(filtered, cli, tmp_path):
    out = tmp_path / "report.html"
    assert cli(["report", filtered, "-o", out]).exit_code == 0
    url = out.resolve().as_uri()

    dom = _chrome(tmp_path, "--dump-dom", url).stdout
    assert 'data-ready="1"' in dom, "the page script did not run"
    assert len(_visible(dom)) == 7

    dom = _chrome(tmp_path, "--dump-dom", url + "#kind=image").stdout
    assert {k for k, _, _ in _visible(dom)} == {"image"} and len(_visible(dom)) == 2
    assert re.search(r'id="shown">2<', dom)

    dom = _chrome(tmp_path, "--dump-dom", url + "#reason=duplicate").stdout
    assert _visible(dom) == [("text", "dropped", "duplicate")]
    assert re.search(r'id="f-status"[^>]*>', dom)

    shot = tmp_path / "report.png"
    r = _chrome(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars", url + "#kind=image")
    assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    from PIL import Image

    im = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    colours = set(im.resize((320, 400)).getdata())
    near = lambda c, t: all(abs(x - y) < 30 for x, y in zip(c, t))  # noqa: E731
    # the inlined clean (green) and distorted (magenta) thumbnails are painted side by side
    assert any(near(c, GREEN) for c in colours) and any(near(c, MAGENTA) for c in colours)


@pytest.mark.browser
def test_report_filters_follow_the_selects_driven_over_devtools(filtered, cli, tmp_path):
    """Drive the page like a person: change the selects (DevTools protocol), read what is shown, screenshot."""
    aiohttp = pytest.importorskip("aiohttp", reason="aiohttp (from the [dev] extra) drives chromium over DevTools")
    import asyncio
    import base64
    import json

    out = tmp_path / "report.html"
    assert cli(["report", filtered, "-o", out]).exit_code == 0
    exe = _chromium()
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'cdp-profile'}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--window-size=1280,1200", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "chromium did not open its DevTools port"

        async def drive():
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    page = next(t for t in await r.json() if t["type"] == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    ids = iter(range(1, 10_000))

                    async def call(method, **params):
                        i = next(ids)
                        await ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
                        while True:
                            msg = json.loads((await ws.receive()).data)
                            if msg.get("id") == i:
                                assert "error" not in msg, msg
                                return msg["result"]

                    async def js(expr):
                        res = await call("Runtime.evaluate", expression=expr, returnByValue=True)
                        return res["result"].get("value")

                    await call("Page.enable")
                    await call("Page.navigate", url=out.resolve().as_uri())
                    for _ in range(100):
                        if await js("document.body && document.body.dataset.ready") == "1":
                            break
                        await asyncio.sleep(0.05)
                    shown = "[document.getElementById('shown').textContent, location.hash]"
                    assert await js(shown) == ["7", ""]
                    pick = ("(function(id, v){var s=document.getElementById(id); s.value=v;"
                            " s.dispatchEvent(new Event('change')); return true;})")
                    await js(pick + "('f-kind', 'text')")
                    assert await js(shown) == ["5", "#kind=text"]
                    await js(pick + "('f-reason', 'refusal')")  # a reason implies status=dropped
                    assert await js(shown) == ["1", "#kind=text&status=dropped&reason=refusal"]
                    visible = await js("Array.from(document.querySelectorAll('article.pair:not(.hidden)'))"
                                       ".map(function(a){return a.querySelector('.rejected p').textContent})")
                    assert visible == ["I'm sorry, I can't see the image."]
                    await js(pick + "('f-reason', '')")
                    await js(pick + "('f-status', 'kept')")
                    assert await js(shown) == ["2", "#kind=text&status=kept"]
                    png = await call("Page.captureScreenshot", format="png")
                    (tmp_path / "report-devtools.png").write_bytes(base64.b64decode(png["data"]))
                    await call("Browser.close")

        asyncio.run(asyncio.wait_for(drive(), 60))
        assert (tmp_path / "report-devtools.png").stat().st_size > 10_000
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

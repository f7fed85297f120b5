"""The browser playground (serve/playground.py, serve/static/): its pages and assets over HTTP, then a two-turn chat
and the live metrics page in headless Chromium (Debian's `chromium` driven by Playwright's Python package; skipped
where either is missing)."""
import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

import hyperdecode as hd
from hyperdecode.serve.playground import STATIC
from tests.serve.conftest import LiveServer

NUMBER = re.compile(r"^\d+(\.\d+)?$")
CHROMIUM = os.environ.get("HYPERDECODE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def server():
    s = LiveServer(hd.LLM("tiny-llama", device="cpu", seed=0), max_batch=4, max_model_len=1024,
                   speculative_config={"method": "ngram", "num_speculative_tokens": 3})
    yield s
    s.stop()


@pytest.mark.parametrize("path, kind", [("/", "text/html"), ("/playground/metrics", "text/html"),
                                        ("/playground/chat.js", "text/javascript"),
                                        ("/playground/metrics.js", "text/javascript"),
                                        ("/playground/style.css", "text/css")])
def test_pages_and_assets(server, path, kind):
    r = httpx.get(server.url + path)
    assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    assert "default-src 'self'" in r.headers["content-security-policy"]


@pytest.mark.parametrize("path", ["/playground/playground.py", "/playground/..%2Fapp.py", "/playground/%2e%2e",
                                  "/playground/nothing.js", "/playground/", "/playground/static/chat.js"])
def test_nothing_outside_static(server, path):
    r = httpx.get(server.url + path)
    assert r.status_code == 404
    assert "message" in r.json()["error"]


def test_static_files_name_no_other_host():
    files = [p for p in STATIC.iterdir() if p.is_file()]
    assert {"index.html", "chat.js", "style.css", "metrics.html", "metrics.js"} <= {p.name for p in files}
    for p in files:
        text = p.read_text()
        assert not re.findall(r"\b[a-z]+://", text, re.I), p.name
        assert not re.findall(r"""(?:src|href)\s*=\s*["']//""", text, re.I), p.name  # protocol-relative


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("HYPERDECODE_REQUIRE_BROWSER"):  # .ci/run installs it: there a missing browser fails
            pytest.fail("HYPERDECODE_REQUIRE_BROWSER is set but no chromium is on PATH")
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)  # Debian's build: Playwright's own browsers are never needed
        yield b
        b.close()


def open_page(browser, url):
    """A page that records every request it makes and every script error."""
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.requests, page.errors = [], []
    page.on("request", lambda r: page.requests.append(r))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    return page


def wait_reply(page, n):
    """The n-th assistant message once its stream ended (send enabled again)."""
    from playwright.sync_api import expect
    reply = page.locator(".msg.assistant").nth(n)
    expect(page.locator("#send")).to_be_enabled(timeout=WAIT_MS)
    expect(reply.locator(".text")).not_to_be_empty(timeout=WAIT_MS)
    return reply


def screenshot(page, name):
    """Saves a screenshot where a person can look at it after the run: $HYPERDECODE_ARTIFACTS, else build/."""
    folder = Path(os.environ.get("HYPERDECODE_ARTIFACTS", Path(__file__).parents[2] / "build" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=folder / name)
    assert (folder / name).stat().st_size > 0


def test_chat_streams_two_turns(server, browser):
    from playwright.sync_api import expect
    page = open_page(browser, server.url + "/")
    page.evaluate("""() => { window.seen = []; new MutationObserver(() => {
        const text = document.querySelector('.msg.assistant .text');
        if (text) window.seen.push(text.textContent.length);
      }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true}); }""")
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    for shown in (card["id"], card["backend"], card["device"], card["speculative"]):
        expect(page.locator("#badge")).to_contain_text(shown, timeout=WAIT_MS)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "64")
    page.check("#ignore-eos")  # the tiny model's replies can end at once; tok/s needs a few reads of the stream
    turns = ["hello there", "abc abc abc abc abc abc abc"]
    for n, text in enumerate(turns):
        page.fill("#prompt", text)
        page.click("#send") if n == 0 else page.press("#prompt", "Enter")
        reply = wait_reply(page, n)
        expect(reply.locator(".ttft")).to_have_text(NUMBER)
        expect(reply.locator(".tps")).to_have_text(NUMBER)
        expect(reply.locator(".accepted")).to_have_text(NUMBER)  # the server speculates
        expect(reply.locator(".cached")).to_have_text(re.compile(r"^\d+ of \d+$"))
        if n == 0:  # the first reply's text grew in several steps while it streamed, not in one
            seen = page.evaluate("window.seen")
            assert len(set(seen) - {0}) >= 3, seen
    assert page.locator("#error").is_hidden()
    chats = [json.loads(r.post_data) for r in page.requests if r.url.endswith("/v1/chat/completions")]
    assert [[m["role"] for m in c["messages"]] for c in chats] == [["user"], ["user", "assistant", "user"]]
    assert chats[1]["messages"][1]["content"] == page.locator(".msg.assistant .text").first.text_content()
    assert all(c["stream"] and c["stream_options"]["include_usage"] for c in chats)
    assert int(page.locator(".msg.assistant .cached").nth(1).text_content().split()[0]) > 0  # turn 1's prefix
    screenshot(page, "playground-chat.png")

    page.fill("#max-tokens", "100000")  # past the context: the server's error envelope is shown
    page.fill("#prompt", "too long")
    page.click("#send")
    expect(page.locator("#error")).to_contain_text("maximum context length", timeout=WAIT_MS)
    assert all(r.url.startswith(server.url + "/") or r.url.startswith("data:") for r in page.requests), \
        [r.url for r in page.requests]
    assert not page.errors


def test_stop_aborts_the_stream(server, browser):
    from playwright.sync_api import expect
    page = open_page(browser, server.url + "/")
    expect(page.locator("#badge")).to_contain_text("tiny-llama", timeout=WAIT_MS)
    page.check("#ignore-eos")
    page.fill("#max-tokens", "960")  # about 0.5 s on the tiny model: stopped at its first text, in the page
    page.evaluate("""() => new MutationObserver((_, watch) => {
        const text = document.querySelector('.msg.assistant .text');
        if (text && text.textContent) { watch.disconnect(); document.getElementById('stop').click(); }
      }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true})""")
    page.fill("#prompt", "go on and on")
    page.click("#send")
    reply = wait_reply(page, 0)
    expect(reply).to_have_class(re.compile(r"\bstopped\b"))
    assert page.locator("#error").is_hidden() and not page.errors
    sent = json.loads(next(r.post_data for r in page.requests if r.url.endswith("/v1/chat/completions")))
    assert sent["ignore_eos"] is True and sent["max_tokens"] == 960


def test_metrics_page_charts_live_series(server, browser):
    from playwright.sync_api import expect
    page = open_page(browser, server.url + "/playground/metrics")
    expect(page.locator("canvas")).to_have_count(6)
    expect(page.get_by_test_id("value-running")).to_have_text(NUMBER, timeout=WAIT_MS)
    expect(page.locator("#chat-link")).to_have_attribute("href", "/")
    with httpx.Client(base_url=server.url, timeout=60) as c:  # traffic for the rates and the TTFT window
        for _ in range(3):
            page.wait_for_timeout(400)
            body = {"model": "tiny-llama", "prompt": "abc abc abc", "max_tokens": 24}
            assert c.post("/v1/completions", json=body).status_code == 200
    expect(page.get_by_test_id("value-ttft")).to_have_text(NUMBER, timeout=WAIT_MS)
    expect(page.get_by_test_id("value-hit-rate")).to_have_text(NUMBER, timeout=WAIT_MS)
    # a series, not a number: the charts keep one point per scrape (the rates from the second on)
    expect(page.locator("#chart-gen-tps canvas")).to_have_attribute("data-points", re.compile(r"^([4-9]|\d\d+)$"),
                                                                    timeout=WAIT_MS)
    assert int(page.locator("#chart-running canvas").get_attribute("data-points")) >= 5
    screenshot(page, "playground-metrics.png")
    assert all(r.url.startswith(server.url + "/") or r.url.startswith("data:") for r in page.requests)
    assert not page.errors

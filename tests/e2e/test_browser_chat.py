"""The web chat in Debian's Chromium (Playwright, headless) against the running local stack."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import redis
from playwright.sync_api import Browser, Locator, Page, Playwright, Route, ViewportSize, expect, sync_playwright

from localstack.stack import Endpoint, LocalStack
from tests.waiting import metric, wait_until

SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
PHONE: ViewportSize = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser, endpoint: Endpoint) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 760}, base_url=endpoint.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def open_chat(page: Page, api_key: str, *, max_tokens: int | None = None) -> None:
    page.goto("/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.get_by_test_id("api-key").fill(api_key)
    page.get_by_test_id("api-key").dispatch_event("change")
    expect(page.get_by_test_id("model").locator("option")).to_have_count(1)
    if max_tokens is not None:
        page.get_by_test_id("max-tokens").fill(str(max_tokens))
        page.get_by_test_id("max-tokens").dispatch_event("change")


def assistant_texts(page: Page) -> list[str]:
    return page.locator(".msg.assistant .body").all_text_contents()


def assistant_sources(page: Page) -> list[str]:
    """The Markdown each answer on the page was rendered from (what the gateway streamed or stored)."""
    return [body.get_attribute("data-source") or "" for body in page.locator(".msg.assistant .body").all()]


def record_growth(page: Page) -> None:
    """Record the length of the newest answer each time the page changes it."""
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const bodies = document.querySelectorAll('.msg.assistant .body');
            if (bodies.length) window.__lengths.push(bodies[bodies.length - 1].textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")


def send(page: Page, text: str) -> None:
    page.get_by_test_id("input").fill(text)
    page.get_by_test_id("input").press("Enter")


def wait_idle(page: Page, timeout: float = 120_000) -> None:
    """The turn is over. The page is busy from the moment a turn is submitted (even while it waits for a
    history read), so right after `send` this cannot see the idle state from before the turn. The deadline is
    generous: the paced model slows to a few tokens/s when both cores are busy (the test workers share them)."""
    expect(page.locator("body")).to_have_attribute("data-state", "idle", timeout=timeout)


@pytest.fixture(scope="module")
def store(local_stack: LocalStack) -> redis.Redis:
    assert local_stack.redis is not None
    return redis.Redis(port=local_stack.redis.port, password=local_stack.redis.password)


def assert_last_turn_answered_and_stored(page: Page, store: redis.Redis) -> None:
    """The last turn ended without an error, and the page shows the answer the gateway stored for it. Its
    words are whatever a random model says (possibly nothing visible), so only the structure is checked."""
    expect(page.get_by_test_id("error")).to_be_hidden()
    expect(page.locator(".msg.assistant").last).to_have_class("msg assistant")  # not pending, not stopped
    session = page.evaluate("localStorage.getItem('qs.sessionId')")
    stored = [json.loads(m) for m in store.lrange(f"qs:session:{session}:messages", 0, -1)]
    assert [m["role"] for m in stored[-2:]] == ["user", "assistant"], stored
    assert assistant_sources(page)[-1] == stored[-1]["content"]


def test_answer_streams_in_and_history_survives_a_reload(page: Page, endpoint: Endpoint) -> None:
    open_chat(page, endpoint.api_key, max_tokens=100)
    record_growth(page)
    send(page, "Hello from the browser test")
    expect(page.locator(".msg.user .body")).to_have_text(["Hello from the browser test"])
    wait_idle(page)
    answer = assistant_texts(page)
    assert len(answer) == 1 and answer[0].strip()
    lengths: list[int] = page.evaluate("window.__lengths")
    partial = {n for n in lengths if 0 < n < len(answer[0])}
    assert len(partial) >= 5, f"the answer did not stream in pieces: lengths seen {sorted(set(lengths))}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat-desktop.png"), full_page=True)

    session_id = page.evaluate("localStorage.getItem('qs.sessionId')")
    page.reload()  # sessionStorage (the key) and localStorage (the session id) both survive a reload
    expect(page.locator(".msg.user .body")).to_have_text(["Hello from the browser test"])
    expect(page.locator(".msg.assistant .body")).to_have_text(answer)
    assert page.evaluate("localStorage.getItem('qs.sessionId')") == session_id

    page.get_by_test_id("new-chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    assert page.evaluate("localStorage.getItem('qs.sessionId')") != session_id
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator(".msg")).to_have_count(0)


def test_a_turn_sent_while_the_history_loads_stays_on_the_page(page: Page, endpoint: Endpoint,
                                                                store: redis.Redis) -> None:
    """Send a message while the page is still reading the session's history (held here until the message is
    sent): when the read answers (404, a new session), the turn is not wiped; it is sent and answered."""
    held: list[Route] = []

    def hold_the_first(route: Route) -> None:
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route("**/v1/sessions/**", hold_the_first)
    page.goto("/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    with page.expect_request("**/v1/sessions/**"):
        page.get_by_test_id("api-key").fill(endpoint.api_key)
        page.get_by_test_id("api-key").dispatch_event("change")
    expect(page.get_by_test_id("model").locator("option")).to_have_count(1)
    page.get_by_test_id("max-tokens").fill("16")
    page.get_by_test_id("max-tokens").dispatch_event("change")
    # Route callbacks run while Playwright is called: evaluating something lets them through.
    wait_until(lambda: page.evaluate("1") == 1 and len(held) == 1, "the history read reaches the route", within=10)
    send(page, "Hello while the history loads")
    assert len(held) == 1 and not held[0].request.failure, "precondition: the history read is still unanswered"
    held[0].fulfill(status=404, content_type="application/json",
                    body='{"error":{"message":"Session not found","type":"invalid_request_error",'
                         '"param":null,"code":"session_not_found"}}')
    expect(page.locator(".msg.user .body")).to_have_text(["Hello while the history loads"])
    expect(page.locator(".msg.assistant .body")).to_have_count(1)
    wait_idle(page)
    assert_last_turn_answered_and_stored(page, store)
    expect(page.locator(".msg.user .body")).to_have_text(["Hello while the history loads"])  # kept to the end


def test_markup_in_a_message_is_shown_as_text_and_runs_nothing(page: Page, endpoint: Endpoint) -> None:
    hostile = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>'
    open_chat(page, endpoint.api_key, max_tokens=8)
    send(page, hostile)
    wait_idle(page)
    for _ in range(2):  # as typed, then as rendered from the stored session after a reload
        expect(page.locator(".msg.user .body")).to_have_text([hostile])
        assert page.locator("#messages img, #messages script, #messages b").count() == 0
        page.wait_for_timeout(300)  # give an injected onerror handler the chance to fire
        assert page.evaluate("window.__xss") is None
        page.reload()
        expect(page.locator(".msg.user")).to_have_count(1)


def test_stop_button_ends_a_stream(page: Page, endpoint: Endpoint, local_stack: LocalStack) -> None:
    open_chat(page, endpoint.api_key, max_tokens=3000)

    # Random weights may end an answer after a few tokens; vLLM's `ignore_eos` (an extra request field,
    # set in Settings like any other) makes this one 3000 tokens long: several seconds.
    page.get_by_test_id("extra-body").fill('{"ignore_eos": true}')
    page.get_by_test_id("extra-body").dispatch_event("change")
    send(page, "Write a very long answer.")
    expect(page.locator(".msg.assistant .body").last).not_to_have_text("", timeout=10_000)
    page.get_by_test_id("stop").click(timeout=5_000)
    wait_idle(page, timeout=2_000)
    expect(page.locator(".msg.assistant").last).to_have_class("msg assistant stopped")
    stopped_at = assistant_texts(page)[-1]
    # The abort went all the way back: vLLM is no longer generating for us ...
    vllm = local_stack.vllm[0]
    wait_until(lambda: metric(vllm.url, "vllm:num_requests_running") == 0, "vLLM stops generating", within=10)
    # ... so nothing more can be on its way, and nothing more was shown.
    assert assistant_texts(page)[-1] == stopped_at, "text kept arriving after stop"
    assert len(stopped_at.split()) < 2500  # far from the 3000 tokens asked for


def test_bad_extra_fields_are_refused_before_sending(page: Page, endpoint: Endpoint) -> None:
    open_chat(page, endpoint.api_key)
    page.get_by_test_id("extra-body").fill("[1, 2]")
    page.get_by_test_id("extra-body").dispatch_event("change")
    send(page, "hello")
    expect(page.get_by_test_id("error")).to_contain_text("must be a JSON object")
    expect(page.locator(".msg")).to_have_count(0)


def test_wrong_key_shows_a_clear_401_message(page: Page) -> None:
    open_page = page.goto("/")
    assert open_page is not None and open_page.ok
    page.get_by_test_id("api-key").fill("sk-local-not-the-key")
    page.get_by_test_id("api-key").dispatch_event("change")
    expect(page.get_by_test_id("error")).to_contain_text("Not authorised (401)")
    expect(page.get_by_test_id("error")).to_contain_text("API key")


def test_first_run_asks_for_a_key_instead_of_showing_a_401(page: Page) -> None:
    """No key yet: the page asks for one (settings open, a notice, not an error) and calls no API."""
    api_calls: list[str] = []
    page.on("request", lambda request: api_calls.append(request.url) if "/v1/" in request.url else None)
    page.goto("/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    notice = page.get_by_test_id("error")
    expect(notice).to_contain_text("Enter your API key")
    expect(notice).to_have_class("error notice")
    expect(notice).not_to_contain_text("401")
    expect(page.get_by_test_id("api-key")).to_be_visible()
    send(page, "hello before any key")
    expect(notice).to_contain_text("Enter your API key")
    expect(page.get_by_test_id("input")).to_have_value("hello before any key")  # kept for later
    assert api_calls == []


def test_a_session_another_key_owns_starts_a_new_chat(page: Page, endpoint: Endpoint, store: redis.Redis) -> None:
    """The browser remembers a session id that the current key does not own (another key used it in this
    browser): the page starts a new chat instead of failing every turn with 404."""
    foreign = "web-foreign-session-0001"
    store.hset(f"qs:session:{foreign}", mapping={"owner": "key:someone-else", "bytes": 0})
    store.expire(f"qs:session:{foreign}", 600)
    page.add_init_script(f"localStorage.setItem('qs.sessionId', '{foreign}')")
    open_chat(page, endpoint.api_key, max_tokens=4)
    send(page, "a turn of my own")
    wait_idle(page)
    expect(page.locator(".msg.user .body")).to_have_text(["a turn of my own"])
    assert_last_turn_answered_and_stored(page, store)
    now = page.evaluate("localStorage.getItem('qs.sessionId')")
    assert now != foreign
    assert store.hget(f"qs:session:{foreign}", "owner") == b"key:someone-else"  # untouched
    assert store.hget(f"qs:session:{now}", "owner") == b"key:local-dev"


def test_rate_limit_message_shows_retry_after(page: Page, endpoint: Endpoint) -> None:
    # The gateway's real 429 is tested in tests/gateway; here only the page's reading of one, with an
    # OpenAI-shaped 429 that the browser receives in place of the gateway's answer.
    open_chat(page, endpoint.api_key)

    def limited(route: Route) -> None:
        route.fulfill(
            status=429, headers={"Retry-After": "7", "Content-Type": "application/json"},
            body='{"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}',
        )

    page.route("**/v1/chat/completions", limited)
    send(page, "hello")
    expect(page.get_by_test_id("error")).to_contain_text("Too many requests (429)")
    expect(page.get_by_test_id("error")).to_contain_text("try again in 7 s")
    wait_idle(page)


WIDE_ANSWER = """| column one | column two | column three | column four | column five | column six |
|---|---|---|---|---|---|
| a rather long cell | another long cell | and one more | still going | nearly there | the end |

```
a_single_line_of_code_that_is_much_wider_than_any_phone_screen = compute(everything, all_at_once, verbose=True)
```
"""


def test_phone_width_fits_without_sideways_scrolling(browser: Browser, endpoint: Endpoint,
                                                      store: redis.Redis) -> None:
    context = browser.new_context(viewport=PHONE, base_url=endpoint.url, is_mobile=True, has_touch=True)

    def fits(page: Page) -> None:
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"page is {width[0]} px wide on a {width[1]} px screen"

    try:
        page = context.new_page()
        # A wide table and a long line of code: they scroll inside the answer, never the page.
        session_id = store_session(store, [("A wide answer, please", WIDE_ANSWER)])
        open_session(page, endpoint.api_key, session_id)
        expect(page.locator(".msg.assistant .body table")).to_have_count(1)
        page.get_by_test_id("max-tokens").fill("60")
        page.get_by_test_id("max-tokens").dispatch_event("change")
        send(page, "A message typed on a phone, long enough to wrap over more than one line of the screen.")
        wait_idle(page)
        fits(page)
        for test_id in ("send", "input", "new-chat", "model", "toggle-sessions"):
            box = page.get_by_test_id(test_id).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], test_id
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "chat-phone.png"), full_page=True)
        # The conversations are a panel opened from the header, over the chat, within the screen.
        sessions = page.get_by_test_id("sessions")
        expect(sessions).to_be_hidden()
        page.get_by_test_id("toggle-sessions").click()
        expect(sessions).to_be_visible()
        expect(page.get_by_test_id("toggle-sessions")).to_have_attribute("aria-expanded", "true")
        box = sessions.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        fits(page)
        page.screenshot(path=str(SCREENSHOTS / "chat-phone-conversations.png"))
        page.get_by_test_id("close-sessions").click()  # the panel covers the header: it closes itself
        expect(sessions).to_be_hidden()
        page.get_by_test_id("toggle-sessions").click()
        list_item(page, session_id).locator(".open").click()  # the open conversation, read again
        expect(sessions).to_be_hidden()  # opening one closes the panel
        expect(page.locator(".msg.user .body")).to_have_text([
            "A wide answer, please",
            "A message typed on a phone, long enough to wrap over more than one line of the screen."])
    finally:
        context.close()


def test_backend_down_is_reported_then_recovers(page: Page, endpoint: Endpoint, local_stack: LocalStack,
                                                store: redis.Redis) -> None:
    # Last in this file: it stops the only vLLM, then restarts it for whatever runs next.
    open_chat(page, endpoint.api_key, max_tokens=8)
    vllm = local_stack.vllm[0]
    vllm.stop()
    try:
        send(page, "anyone there?")
        expect(page.get_by_test_id("error")).to_contain_text("backend is unavailable", timeout=30_000)
        wait_idle(page)
        assert page.locator(".msg.assistant").count() == 0
    finally:
        local_stack.restart(vllm)
    for gateway in local_stack.gateways:
        gateway.wait_ready()
    send(page, "and now?")
    wait_idle(page)
    assert_last_turn_answered_and_stored(page, store)


# --- Markdown, from a stored session whose text the test fixes (never from what the random model says) -------
OWNER = "key:local-dev"  # the identity of the local stack's development key


def store_session(store: redis.Redis, turns: list[tuple[str, str]], *, owner: str = OWNER,
                  active_minutes_ago: int = 0) -> str:
    """Write a session into Redis as the gateway stores one (tests/gateway cover the gateway writing it):
    its owner, its messages and its entry in the owner's index, as last active `active_minutes_ago` (two
    sessions written in the same millisecond would tie, and Redis orders ties by id). Returns its id."""
    session_id = f"web-test-{uuid.uuid4()}"
    # Two hours: longer than the gateway's session TTL (1 h here), so these sort above the sessions other tests
    # make through the gateway (the list is latest expiry first) and stay on the list's first page.
    ttl_ms = 7_200_000 - active_minutes_ago * 60_000
    messages = [json.dumps({"role": role, "content": text}) for user, answer in turns
                for role, text in (("user", user), ("assistant", answer))]
    size = sum(len(m) for m in messages)
    meta, listed = f"qs:session:{session_id}", f"qs:session:{session_id}:messages"
    with store.pipeline() as pipe:
        pipe.hset(meta, mapping={"owner": owner, "bytes": size})
        pipe.rpush(listed, *messages)
        pipe.zadd(f"qs:owner:{owner}:sessions", {session_id: int(time.time() * 1000) + ttl_ms})
        pipe.hset(f"qs:owner:{owner}:bytes", session_id, size)
        for key in (meta, listed):
            pipe.pexpire(key, ttl_ms)
        pipe.execute()
    return session_id


def open_session(page: Page, api_key: str, session_id: str) -> None:
    page.add_init_script(f"localStorage.setItem('qs.sessionId', {json.dumps(session_id)})")
    open_chat(page, api_key)


MARKDOWN_ANSWER = """Here is the plan:

- first item
- second item

| name | size |
|------|-----:|
| a    |    1 |
| b    |   22 |

```python
print("hello")
```
"""


def test_a_stored_answer_is_rendered_as_markdown_with_a_copy_button(browser: Browser, endpoint: Endpoint,
                                                                     store: redis.Redis) -> None:
    context = browser.new_context(viewport={"width": 1100, "height": 760}, base_url=endpoint.url)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    try:
        page = context.new_page()
        session_id = store_session(store, [("Make me a plan", MARKDOWN_ANSWER)])
        open_session(page, endpoint.api_key, session_id)
        answer = page.locator(".msg.assistant .body")
        expect(answer).to_have_count(1)
        expect(answer.locator("ul > li")).to_have_text(["first item", "second item"])
        expect(answer.locator("table th")).to_have_text(["name", "size"])
        expect(answer.locator("table td")).to_have_text(["a", "1", "b", "22"])
        expect(answer.locator("table td").nth(1)).to_have_attribute("align", "right")
        code = answer.locator("pre > code")
        expect(code).to_have_text('print("hello")\n')
        expect(code).to_have_class("language-python")
        expect(page.locator(".msg.user .body")).to_have_text(["Make me a plan"])  # the user's text stays text
        assert assistant_sources(page) == [MARKDOWN_ANSWER]
        copy = answer.get_by_role("button", name="Copy code")
        copy.click()
        expect(copy).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == 'print("hello")\n'
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "chat-markdown.png"), full_page=True)
    finally:
        context.close()


HOSTILE_MARKDOWN = """[click me](javascript:window.__xss=1) and [data](data:text/html;base64,PHNjcmlwdD4=)

<img src=x onerror="window.__xss=3"> <b>bold</b> <a href="https://example.com" onclick="window.__xss=4">a</a>

<script>window.__xss=5</script>

<iframe src="/"></iframe><form action="https://example.com"><button>go</button></form>

![pixel](https://tracker.example.com/p.png "t") <div class="error" style="color:red">styled</div>

[ok](https://example.com/docs)
"""


def test_hostile_markdown_in_an_answer_is_inert(page: Page, endpoint: Endpoint, store: redis.Redis) -> None:
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    session_id = store_session(store, [("hi", HOSTILE_MARKDOWN)])
    open_session(page, endpoint.api_key, session_id)
    answer = page.locator(".msg.assistant .body")
    expect(answer.locator("a")).to_have_count(3)  # the two hostile links and the good one; raw <a> is text
    # No element a Markdown answer has no use for, no handler, no style, no class of the page's own.
    for selector in ("img", "script", "iframe", "form", "button:not(.copy)", "b", "div.error", "[style]",
                     "[onerror]", "[onclick]"):
        assert answer.locator(selector).count() == 0, selector
    hrefs = [a.get_attribute("href") for a in answer.locator("a").all()]
    assert hrefs.count(None) == 2, hrefs  # javascript: and data: links lost their target
    assert set(hrefs) - {None} == {"https://example.com/docs"}
    for a in answer.locator("a[href]").all():
        assert a.get_attribute("rel") == "noopener noreferrer nofollow" and a.get_attribute("target") == "_blank"
    # Raw HTML is shown as the text it is; the image as its alt text (no request to the tracker).
    expect(answer).to_contain_text('<img src=x onerror="window.__xss=3">')
    expect(answer).to_contain_text("<script>window.__xss=5</script>")
    expect(answer).to_contain_text("pixel")
    expect(answer).to_contain_text('<a href="https://example.com" onclick="window.__xss=4">a</a>')
    answer.locator("a", has_text="click me").click()
    answer.locator("a", has_text="data").click()
    page.wait_for_timeout(300)  # give anything that slipped through the chance to run
    assert page.evaluate("window.__xss") is None
    assert violations == []  # nothing even tried to run against the policy


def test_the_edge_sends_a_content_security_policy_that_blocks_inline_script(page: Page, endpoint: Endpoint) -> None:
    response = page.goto("/")
    assert response is not None and response.ok
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    for path in ("/app.js", "/markdown.js", "/vendor/marked.umd.js", "/vendor/purify.min.js", "/style.css"):
        asset = page.request.get(path)
        assert asset.ok and asset.headers["content-security-policy"] == policy, path
    # An inline script that got into the page anyway does not run, and the browser says why.
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    with page.expect_event("console", lambda msg: "Content Security Policy" in msg.text):
        page.evaluate("""() => {
            const s = document.createElement('script');
            s.textContent = 'window.__inline = 1';
            document.body.append(s);
        }""")
    assert page.evaluate("window.__inline") is None


def test_a_streaming_answer_re_renders_only_its_last_block(page: Page, endpoint: Endpoint) -> None:
    """The page's Markdown view fed a growing answer, as the stream feeds it: blocks already complete stay the
    same DOM nodes (not re-rendered), only the growing last block changes."""
    page.goto("/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    result = page.evaluate("""async () => {
        const box = document.createElement('div');
        document.body.append(box);
        const view = QsMarkdown.createView(box);
        const text = "# Title\\n\\nA first paragraph.\\n\\n- one\\n- two\\n\\n```js\\nlet x = 1;\\nlet y = 2;\\n```\\n";
        let first = null, firstKept = true, frames = 0;
        for (let n = 1; n <= text.length; n++) {
            view.set(text.slice(0, n));
            if (n % 7 === 0 || n === text.length) {
                await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
                frames += 1;
                const now = box.firstElementChild;
                if (first === null && now && now.textContent.trim() === 'Title' && box.children.length > 1) first = now;
                if (first !== null && box.firstElementChild !== first) firstKept = false;
            }
        }
        view.flush();
        return {firstKept, hadFirst: first !== null, frames, blocks: box.children.length,
                tags: Array.from(box.children, (b) => b.firstElementChild.tagName)};
    }""")
    assert result["hadFirst"] and result["firstKept"], result
    assert result["tags"] == ["H1", "P", "UL", "DIV"], result  # DIV: the code block with its copy button


# --- conversations, regenerate, timing, keyboard ---------------------------------------------------------------
def list_item(page: Page, session_id: str) -> Locator:
    return page.get_by_test_id("session-list").locator(f"li[data-id='{session_id}']")


def test_the_list_shows_this_callers_conversations_and_reopens_one(page: Page, endpoint: Endpoint,
                                                                   store: redis.Redis) -> None:
    older = store_session(store, [("What is Redis?", "A data structure server."), ("And AOF?", "A log.")],
                          active_minutes_ago=1)
    newer = store_session(store, [("How do I page?", "With `after`.")])
    foreign = store_session(store, [("Someone else's secret question", "…")], owner="key:someone-else")
    open_chat(page, endpoint.api_key, max_tokens=8)
    expect(list_item(page, newer)).to_have_text("How do I page?×")
    expect(list_item(page, older)).to_have_text("What is Redis?×")
    assert list_item(page, foreign).count() == 0
    expect(page.get_by_test_id("session-list")).not_to_contain_text("Someone else's secret question")
    ids = [li.get_attribute("data-id") for li in page.get_by_test_id("session-list").locator("li").all()]
    assert ids.index(newer) < ids.index(older)  # latest activity first

    list_item(page, older).get_by_role("button", name="What is Redis?", exact=True).click()
    expect(page.locator(".msg.user .body")).to_have_text(["What is Redis?", "And AOF?"])
    assert assistant_sources(page) == ["A data structure server.", "A log."]
    expect(list_item(page, older).locator(".open")).to_have_attribute("aria-current", "true")
    assert page.evaluate("localStorage.getItem('qs.sessionId')") == older

    page.get_by_test_id("new-chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.get_by_test_id("session-list").locator("[aria-current]")).to_have_count(0)
    send(page, "A brand new conversation")
    wait_idle(page)
    assert_last_turn_answered_and_stored(page, store)
    now = page.evaluate("localStorage.getItem('qs.sessionId')")
    expect(list_item(page, now)).to_have_text("A brand new conversation×")  # listed once the turn is stored
    expect(list_item(page, now).locator(".open")).to_have_attribute("aria-current", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat-conversations.png"))


def test_a_conversation_is_deleted_from_the_list_in_two_steps(page: Page, endpoint: Endpoint,
                                                              store: redis.Redis) -> None:
    doomed = store_session(store, [("Delete me", "ok")])
    open_session(page, endpoint.api_key, doomed)
    expect(page.locator(".msg.user .body")).to_have_text(["Delete me"])
    delete = list_item(page, doomed).locator(".delete")
    delete.click()
    expect(delete).to_have_attribute("aria-label", "Confirm: delete conversation Delete me")
    assert store.exists(f"qs:session:{doomed}") == 1  # one click deletes nothing
    delete.click()
    expect(list_item(page, doomed)).to_have_count(0)
    assert store.exists(f"qs:session:{doomed}", f"qs:session:{doomed}:messages") == 0
    # It was the open conversation: the page starts a new one.
    expect(page.locator(".msg")).to_have_count(0)
    assert page.evaluate("localStorage.getItem('qs.sessionId')") != doomed


def test_regenerate_answers_the_last_message_again_and_shows_its_speed(page: Page, endpoint: Endpoint,
                                                                       store: redis.Redis) -> None:
    open_chat(page, endpoint.api_key, max_tokens=16)
    # Exactly 16 tokens whatever the random weights say (vLLM's ignore_eos), paced like a GPU: a rate to show.
    page.get_by_test_id("extra-body").fill('{"ignore_eos": true}')
    page.get_by_test_id("extra-body").dispatch_event("change")
    send(page, "Tell me something")
    wait_idle(page)
    assert_last_turn_answered_and_stored(page, store)
    timing = page.locator(".msg.assistant").last.get_by_test_id("timing")
    expect(timing).to_have_text(re.compile(r"^first token \d+\.\d\d s · \d+\.\d tokens/s · 16 tokens$"))
    session = page.evaluate("localStorage.getItem('qs.sessionId')")
    first = [json.loads(m) for m in store.lrange(f"qs:session:{session}:messages", 0, -1)]

    page.get_by_test_id("regenerate").click()
    wait_idle(page)
    assert_last_turn_answered_and_stored(page, store)
    # The turn was replaced, not repeated: one question, one (new) answer, on the page and in the session.
    stored = [json.loads(m) for m in store.lrange(f"qs:session:{session}:messages", 0, -1)]
    assert [m["role"] for m in stored] == ["user", "assistant"] and stored[0] == first[0]
    expect(page.locator(".msg.user .body")).to_have_text(["Tell me something"])
    expect(page.locator(".msg.assistant")).to_have_count(1)
    expect(page.locator(".msg.assistant").last.get_by_test_id("timing")).to_contain_text("16 tokens")
    expect(page.get_by_test_id("regenerate")).to_have_count(1)  # under the last stored answer only


def test_no_regenerate_under_a_stopped_answer(page: Page, endpoint: Endpoint) -> None:
    """A stopped answer was never stored: taking 'the last turn' back would take an earlier one."""
    open_chat(page, endpoint.api_key, max_tokens=3000)
    page.get_by_test_id("extra-body").fill('{"ignore_eos": true}')
    page.get_by_test_id("extra-body").dispatch_event("change")
    send(page, "Write a very long answer.")
    expect(page.locator(".msg.assistant .body").last).not_to_have_text("", timeout=10_000)
    page.get_by_test_id("input").press("Escape")  # the keyboard's Stop
    wait_idle(page)
    expect(page.locator(".msg.assistant").last).to_have_class("msg assistant stopped")
    expect(page.get_by_test_id("regenerate")).to_have_count(0)
    expect(page.get_by_test_id("timing")).to_have_count(0)


def test_everything_has_a_name_and_works_from_the_keyboard(page: Page, endpoint: Endpoint,
                                                          store: redis.Redis) -> None:
    session_id = store_session(store, [("Keyboard question", "Keyboard answer\n\n```\ncode\n```")])
    open_chat(page, endpoint.api_key)
    expect(list_item(page, session_id)).to_have_count(1)
    # Screen readers: every control has an accessible name (an unnamed one shows as a bare role).
    snapshot = page.locator("body").aria_snapshot()
    unnamed = [line for line in snapshot.splitlines()
               if re.fullmatch(r"\s*- (button|textbox|combobox|spinbutton|link)( \[.*\])?:?", line)]
    assert unnamed == [], unnamed
    # Keyboard only: focus moves to the conversation with Tab, Enter opens it.
    page.get_by_test_id("input").focus()
    for _ in range(200):
        page.keyboard.press("Shift+Tab")
        if page.evaluate("document.activeElement.closest('li') && document.activeElement.closest('li').dataset.id")\
                == session_id and page.evaluate("document.activeElement.className") == "open":
            break
    else:
        raise AssertionError("Shift+Tab never reached the conversation in the list")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.user .body")).to_have_text(["Keyboard question"])
    expect(page.get_by_test_id("input")).to_be_focused()  # back to typing
    page.keyboard.type("Next question")
    page.keyboard.press("Enter")
    wait_idle(page)
    assert_last_turn_answered_and_stored(page, store)
    expect(page.locator(".msg.user .body")).to_have_text(["Keyboard question", "Next question"])


def test_show_older_continues_the_list_where_it_ended(page: Page, endpoint: Endpoint) -> None:
    """The page's reading of a paged list (the gateway's paging is tested in tests/gateway): 'Show older' asks
    for the page after the last id shown and appends it; a session with no stored message is not shown."""
    asked: list[dict[str, list[str]]] = []

    def item(n: int, title: str, count: int = 2) -> dict[str, object]:
        return {"id": f"web-paged-{n:04d}", "object": "session", "title": title, "message_count": count,
                "expires_at": 2_000_000_000}

    def pages(route: Route) -> None:
        query = parse_qs(urlparse(route.request.url).query)
        asked.append(query)
        if "after" not in query:
            data, more = [item(1, "newest"), item(2, "", count=0), item(3, "middle")], True
        else:
            data, more = [item(4, "oldest")], False
        route.fulfill(json={"object": "list", "data": data, "first_id": data[0]["id"], "last_id": data[-1]["id"],
                            "has_more": more})

    page.route(re.compile(r".*/v1/sessions\?.*"), pages)
    open_chat(page, endpoint.api_key)
    titles = page.get_by_test_id("session-list").locator(".open")
    expect(titles).to_have_text(["newest", "middle"])
    page.get_by_test_id("more-sessions").click()
    expect(titles).to_have_text(["newest", "middle", "oldest"])
    expect(page.get_by_test_id("more-sessions")).to_be_hidden()
    assert asked[-1]["after"] == ["web-paged-0003"] and asked[-1]["limit"] == ["20"]

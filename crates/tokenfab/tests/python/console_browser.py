"""The web console in a real headless browser (Debian's Chromium driven by Playwright), as
an operator and a key holder use it: the admin pages make an account, credit it and issue
a key (and revoke another); the key works over the API and the account page's chart shows
that request; the playground streams an answer token by token, shows a thinking model's
thought in its own pane, and Stop ends a long answer in the browser and on the server.

Run by crates/tokenfab/tests/console.rs against a server it started; prints a JSON summary.
Environment: TOKENFAB_CONSOLE_URL (the server's root), TOKENFAB_ADMIN_KEY, TOKENFAB_MODEL (a
plain chat model), TOKENFAB_THINK_MODEL (a reasoning one whose template reads
enable_thinking), TOKENFAB_CHROMIUM (default /usr/bin/chromium) and, to save the README's
picture, TOKENFAB_CONSOLE_SCREENSHOT (a PNG path).
"""

import json
import os
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["TOKENFAB_CONSOLE_URL"].rstrip("/")
ADMIN = os.environ["TOKENFAB_ADMIN_KEY"]
MODEL = os.environ["TOKENFAB_MODEL"]
THINK = os.environ["TOKENFAB_THINK_MODEL"]
CHROMIUM = os.environ.get("TOKENFAB_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = os.environ.get("TOKENFAB_CONSOLE_SCREENSHOT")
# Everything from the network off: the console must work with nothing but the server.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ANSWER_TIMEOUT_MS = 120_000


def api(path, key=None, body=None):
    """(status, JSON) of one call to the server, outside the browser."""
    req = urllib.request.Request(BASE + path, method="POST" if body is not None else "GET")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    data = None
    if body is not None:
        req.add_header("Content-Type", "application/json")
        data = json.dumps(body).encode()
    try:
        with urllib.request.urlopen(req, data, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def wait_until(what, check, seconds=10.0):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def running_sequences():
    _, health = api("/health")
    return sum(m.get("running", 0) for m in health["models"])


def last_turn(page):
    return page.locator("#transcript .turn.assistant").last


def ask(page, model, prompt, max_tokens, temperature="", seed=""):
    """Starts a playground answer; returns the transcript's new assistant turn."""
    page.select_option("#model", model)
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", str(temperature))
    page.fill("#seed", str(seed))
    page.fill("#prompt", prompt)
    # Records the answer's length at every change of the transcript: the streaming a
    # user sees, one DOM update after another.
    page.evaluate("""() => {
        window.lengths = [];
        window.observer?.disconnect();
        window.observer = new MutationObserver(() => {
            const a = document.querySelector('#transcript .turn.assistant:last-child .answer');
            if (a) window.lengths.push(a.textContent.length);
        });
        window.observer.observe(document.getElementById('transcript'),
                                {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#send")
    expect(page.locator("#stop")).to_be_enabled()
    return last_turn(page)


def admin_pages(page, summary):
    page.goto(BASE + "/#admin")
    page.fill("#admin-key", ADMIN)
    page.click("#admin-login button[type=submit]")
    expect(page.locator("#admin-body")).to_be_visible()
    # Prices and limits in force, and the models with their health.
    terms = page.locator(f'#terms tr[data-model="{MODEL}"]')
    expect(terms).to_contain_text("1000.00")
    expect(terms).to_contain_text("60 RPM")
    expect(page.locator(f'#models tr[data-model="{THINK}"]')).to_contain_text("switchable")
    expect(page.locator(f'#models tr[data-model="{MODEL}"]')).to_contain_text("0 running")

    page.fill("#new-account input[name=name]", "console-user")
    page.click("#new-account button")
    row = page.locator('#accounts tr[data-account="console-user"]')
    expect(row).to_be_visible()
    page.select_option("#credit select", "console-user")
    page.fill("#credit input[name=amount]", "5")
    page.click("#credit button")
    expect(row).to_contain_text("5.00")

    def new_key():
        before = page.locator("#keys tr[data-key]").count()
        page.select_option("#new-key select", "console-user")
        page.click("#new-key button")
        expect(page.locator("#keys tr[data-key]")).to_have_count(before + 1)
        expect(page.locator("#new-secret")).to_be_visible()
        return page.inner_text("#new-secret-value").strip()

    spare = new_key()
    spare_row = page.locator("#keys tr[data-key]").last
    spare_row.locator("button.danger").click()
    spare_row.locator("button.danger").click()
    expect(spare_row).to_contain_text("revoked")
    status, body = api("/v1/models", spare)
    assert status == 401, (status, body)
    assert body["error"]["code"] == "invalid_api_key", body

    key = new_key()
    assert key.startswith("sk-"), key
    summary["keys_made"] = 2
    return key


def api_request(key, summary):
    """The new key over the API, as any client would use it."""
    status, body = api("/v1/chat/completions", key, {
        "model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8, "temperature": 0})
    assert status == 200, body
    usage = body["usage"]
    summary["api_tokens"] = usage["total_tokens"]
    _, rows = api("/v1/user/requests?limit=5", key)
    assert len(rows["data"]) == 1 and float(rows["data"][0]["cost"]) > 0, rows
    return usage


def account_page(page, requests, tokens=None):
    page.goto(BASE + "/#account")
    item = page.locator(f'#usage-legend li[data-model="{MODEL}"]')
    expect(item).to_contain_text(f"{requests} request{'' if requests == 1 else 's'}")
    if tokens is not None:
        expect(item).to_contain_text(f"{tokens:,} tokens")
    expect(page.locator(f'#usage-chart rect.bar[data-model="{MODEL}"]').first).to_be_attached()
    expect(page.locator("#balance")).to_contain_text("console-user")
    return item.inner_text()


def streamed_answer(page, summary):
    t = ask(page, MODEL, "Name three colours and say one thing about each.", 48, 0)
    expect(t).to_have_class("turn assistant done", timeout=ANSWER_TIMEOUT_MS)
    lengths = page.evaluate("window.lengths")
    growing = sorted({n for n in lengths if n > 0})
    # Several updates before the end: the text arrived piece by piece, not at once.
    assert len(growing) >= 3, lengths
    stats = t.locator(".stats").inner_text()
    assert "completion tokens" in stats and "tokens/s" in stats, stats
    assert t.locator(".thought").is_hidden(), "a plain model got a thought pane"
    summary["stream_updates"] = len(growing)
    summary["stream_stats"] = stats


def thinking_answer(page, summary):
    page.select_option("#model", THINK)
    expect(page.locator("#reasoning")).to_be_visible()
    expect(page.locator("#enable-thinking-row")).to_be_visible()
    assert page.get_attribute("#thinking-budget", "placeholder").startswith("default "), "no budget"
    page.fill("#system", "You are a patient science teacher.")
    t = ask(page, THINK, "Why is the sky blue?", 72, 0)
    thought = t.locator(".thought")
    # The pane opens while the thought streams, before the answer is done.
    expect(thought).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(t).to_have_class("turn assistant done", timeout=ANSWER_TIMEOUT_MS)
    text = t.locator(".thought-text").inner_text().strip()
    assert text, "the thought pane is empty"
    assert "think>" not in text, text
    stats = t.locator(".stats").inner_text()
    assert "reasoning)" in stats, stats
    summary["thought_chars"] = len(text)
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT)
    # Folded, the pane keeps its place beside the answer.
    thought.locator("summary").click()
    assert thought.get_attribute("open") is None
    page.fill("#system", "")


def stopped_answer(page, key, summary):
    page.click("#clear")
    t = ask(page, MODEL, "Write a very long essay about the history of the sea.", 1024, 1.0, 3)
    wait_until("tokens to stream", lambda: len(t.locator(".answer").inner_text()) > 20, 60)
    assert "streaming" in t.get_attribute("class"), "the answer ended before Stop"
    assert running_sequences() == 1
    page.click("#stop")
    # Idle again in the browser...
    expect(t).to_have_class("turn assistant stopped")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    # ...and on the server: the sequence is cancelled, the request billed as cut.
    started = time.monotonic()
    wait_until("the server to cancel the generation", lambda: running_sequences() == 0, 5)
    summary["cancelled_after_s"] = round(time.monotonic() - started, 3)
    row = wait_until("the ledger row of the stopped request",
                     lambda: next((r for r in api("/v1/user/requests?limit=1", key)[1]["data"]
                                   if r["status"] == "client_gone"), None), 5)
    assert row["completion_tokens"] > 0 and float(row["cost"]) > 0, row
    summary["stopped_completion_tokens"] = row["completion_tokens"]


def main():
    summary = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        expect.set_options(timeout=15_000)

        key = admin_pages(page, summary)
        usage = api_request(key, summary)
        page.click("#use-secret")
        account_page(page, 1, usage["total_tokens"])

        page.goto(BASE + "/#playground")
        streamed_answer(page, summary)
        thinking_answer(page, summary)
        stopped_answer(page, key, summary)

        summary["legend"] = account_page(page, 3)
        recent = page.locator("#recent tbody tr")
        expect(recent).to_have_count(4)
        assert recent.first.get_attribute("data-status") == "client_gone"
        expect(page.locator(f'#usage-legend li[data-model="{THINK}"]')).to_contain_text("1 request")

        assert not errors, errors
        browser.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

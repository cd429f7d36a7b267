"""The chat page at `/` driven by headless Chromium against a real `storm dev` process.

Alice and Bob (two browser contexts) join #general: each sees the other online, Bob's typing reaches
Alice, messages go both ways exactly once with user text shown as text, and Carol, joining later, gets
both from history.  Set STORM_E2E_SCREENSHOT=/path.png to keep a screenshot of Alice's page.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ci import require_module, unavailable

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 5_000


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is missing", needed_by="browser")
    sync_api = require_module("playwright.sync_api", needed_by="browser")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class Chat:
    """One person's page, with the page errors it raised."""

    def __init__(self, browser: object, base: str, user: str, query: str = "") -> None:
        self.context = browser.new_context(viewport={"width": 1100, "height": 640})  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.page_errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        self.page.goto(f"{base}/{query}")
        self.user = user

    def join(self, channel: str = "general") -> Chat:
        from playwright.sync_api import expect

        page = self.page
        page.select_option("#user", self.user)
        option = page.locator("#channel option", has_text=re.compile(rf"^# {channel}$"))
        expect(option).to_have_count(1)
        page.select_option("#channel", label=f"# {channel}")
        page.click("#connect")
        expect(page.locator("#status")).to_have_attribute("data-state", "online")
        expect(page.locator("#channel-title")).to_have_text(f"# {channel}")
        expect(page.locator("#online [data-testid=online-user]", has_text=self.user.title())).to_have_count(1)
        return self

    def messages(self, text: str | None = None):  # type: ignore[no-untyped-def]
        loc = self.page.locator("#messages [data-testid=message]")
        return loc if text is None else loc.filter(has_text=text)

    def send(self, text: str) -> None:
        self.page.fill("#message-input", text)
        self.page.click("#send")

    def close(self) -> None:
        self.context.close()


def test_two_people_chat_live(browser: object, storm_dev_server: str) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    chats: list[Chat] = []
    try:
        alice = Chat(browser, storm_dev_server, "alice").join()
        chats.append(alice)
        bob = Chat(browser, storm_dev_server, "bob").join()
        chats.append(bob)

        # presence: each sees the other (Alice learns of Bob through presence.join)
        expect(alice.page.locator("#online [data-testid=online-user]", has_text="Bob")).to_have_count(1)
        expect(bob.page.locator("#online [data-testid=online-user]", has_text="Alice")).to_have_count(1)
        expect(alice.page.locator("#online-count")).to_have_text("2")

        # typing: Bob types, Alice is told; Bob is not told about himself
        bob.page.fill("#message-input", "hmm")
        expect(alice.page.locator("#typing")).to_have_text("Bob is typing…")
        expect(bob.page.locator("#typing")).to_have_text("")

        # Alice -> Bob; markup is shown as text, never interpreted
        tag = uuid.uuid4().hex[:10]
        hello = f"hi bob <b>{tag}</b> & <img src=x>"
        alice.send(hello)
        expect(bob.messages(hello)).to_have_count(1)
        expect(bob.messages(hello).locator("[data-testid=message-author]")).to_have_text("Alice")
        expect(bob.messages(hello).locator("[data-testid=message-text]")).to_have_text(hello)
        mine = alice.messages(hello)
        expect(mine).to_have_attribute("data-delivered", "true")  # her own broadcast came back ...
        expect(mine).to_have_attribute("data-message-id", re.compile(r"^[0-9a-f-]{36}$"))
        expect(mine).not_to_have_class(re.compile(r"\b(pending|failed)\b"))
        expect(mine).to_have_count(1)  # ... and merged with the pending one: shown once
        expect(alice.page.locator("#message-input")).to_have_value("")
        for chat in (alice, bob):
            expect(chat.page.locator("#messages b, #messages img")).to_have_count(0)

        # Bob replies; his message also ends his "typing"
        reply = f"hello alice {tag}"
        bob.send(reply)
        expect(alice.messages(reply)).to_have_count(1)
        expect(alice.page.locator("#typing")).to_have_text("")
        expect(alice.messages()).to_have_count(2)
        expect(alice.messages().locator("[data-testid=message-text]")).to_have_text([hello, reply])
        expect(bob.messages()).to_have_count(2)
        expect(bob.messages(reply)).to_have_attribute("data-delivered", "true")

        # Carol, joining later, gets both from history (oldest first, once each); her leave is seen
        carol = Chat(browser, storm_dev_server, "carol").join()
        chats.append(carol)
        expect(carol.messages().locator("[data-testid=message-text]")).to_have_text([hello, reply])
        expect(alice.page.locator("#online [data-testid=online-user]", has_text="Carol")).to_have_count(1)
        carol.close()
        chats.remove(carol)
        expect(alice.page.locator("#online [data-testid=online-user]", has_text="Carol")).to_have_count(0)

        for chat in (alice, bob):
            expect(chat.page.locator("#errors [data-testid=error]")).to_have_count(0)
            expect(chat.page.locator("#status")).to_have_attribute("data-state", "online")
            assert chat.page_errors == []
        shot = os.environ.get("STORM_E2E_SCREENSHOT")
        if shot:
            alice.page.screenshot(path=shot)
    finally:
        for chat in chats:
            chat.close()

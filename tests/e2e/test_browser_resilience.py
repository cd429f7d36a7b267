"""The chat page survives a SIGKILL of the server: two headless Chromium pages chat, `storm dev` is killed
and started again on the same port and database, both pages show "reconnecting", keep what is typed
meanwhile in their outbox, reconnect, and end with the same messages, each once, in channel order.

Embedded mode loses what the persistence worker had not stored at the kill (docs/delivery.md), so the
test waits until the messages sent before the kill are stored (the SDK's `history`) before killing.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from storm_sdk import ClientOptions, StormClient, dev_token_provider, list_channels

from tests.e2e.test_browser_chat import Chat, browser  # noqa: F401 - the fixture is used by name
from tests.support.dev_server import StormProcess

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

TIMEOUT_MS = 20_000
QUERY = "?reconnect_max_ms=1500"  # keep the reconnect delay short: the server is down for seconds only


async def _wait_stored(server: StormProcess, channel_name: str, offset: int, timeout: float = 10.0) -> None:
    token = await dev_token_provider(server.base, "carol")()
    channel = (await list_channels(server.base, token))[channel_name]
    async with StormClient(server.ws, dev_token_provider(server.base, "carol"), ClientOptions()) as client:
        deadline = time.monotonic() + timeout
        while True:
            page = await client.history(channel, limit=1)
            if page.messages and page.messages[0].offset >= offset:
                return
            assert time.monotonic() < deadline, f"offset {offset} of #{channel_name} not stored in {timeout} s"
            await asyncio.sleep(0.05)


def _shown(chat: Chat) -> list[tuple[str, str]]:
    """(offset, text) of every rendered message, top to bottom."""
    return [tuple(x) for x in chat.page.eval_on_selector_all(
        "#messages [data-testid=message]",
        "els => els.map(e => [e.dataset.offset || '', e.querySelector('[data-testid=message-text]').textContent])")]


def test_both_pages_reconnect_after_sigkill_and_show_every_message_once_in_order(
        browser: object, tmp_path: Path) -> None:  # noqa: F811 - pytest fixture
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    server = StormProcess(tmp_path)
    server.start()
    chats: list[Chat] = []
    try:
        alice = Chat(browser, server.base, "alice", QUERY).join("random")
        chats.append(alice)
        bob = Chat(browser, server.base, "bob", QUERY).join("random")
        chats.append(bob)

        before = ["a1 before", "b1 before", "a2 before"]
        for who, text in zip((alice, bob, alice), before, strict=True):
            who.send(text)
            for chat in chats:
                expect(chat.messages(text)).to_have_attribute("data-delivered", "true")
        offsets = [int(o) for o, _ in _shown(alice)]
        with ThreadPoolExecutor(1) as pool:  # a loop of its own, away from Playwright's
            pool.submit(asyncio.run, _wait_stored(server, "random", max(offsets))).result()

        server.kill()
        for chat in chats:  # a calm state: a "reconnecting" banner, not an error
            expect(chat.page.locator("#status")).to_have_attribute("data-state", "reconnecting")
            expect(chat.page.locator("#banner")).to_contain_text("Reconnecting")
            expect(chat.page.locator("#errors [data-testid=error]")).to_have_count(0)
            expect(chat.page.locator("#message-input")).to_be_enabled()  # writing goes on while offline

        alice.send("a3 while down")
        bob.send("b2 while down")
        expect(alice.messages("a3 while down")).to_have_class(re.compile(r"\bpending\b"))
        expect(bob.messages("b2 while down")).to_have_class(re.compile(r"\bpending\b"))
        expect(alice.page.locator("#banner")).to_contain_text("1 unsent")

        server.start()
        for chat in chats:
            expect(chat.page.locator("#status")).to_have_attribute("data-state", "online")
        alice.send("a4 after")
        expected = {*before, "a3 while down", "b2 while down", "a4 after"}
        for chat in chats:
            for text in expected:
                expect(chat.messages(text)).to_have_count(1)
                expect(chat.messages(text)).to_have_attribute("data-delivered", "true")
            expect(chat.page.locator("#messages .pending, #messages .failed")).to_have_count(0)
            expect(chat.messages()).to_have_count(len(expected))

        shown_a, shown_b = _shown(alice), _shown(bob)
        assert shown_a == shown_b  # the same list on both pages
        assert [t for _, t in shown_a][:3] == before and [t for _, t in shown_a][-1] == "a4 after"
        assert {t for _, t in shown_a} == expected
        offs = [int(o) for o, _ in shown_a]
        assert offs == sorted(offs) and len(set(offs)) == len(offs)  # channel order, each offset once
        for chat in chats:
            expect(chat.page.locator("#errors [data-testid=error]")).to_have_count(0)
            assert chat.page_errors == []

        # a deliberate disconnect: offline, no banner, no error, and no reconnect
        alice.page.click("#connect")
        expect(alice.page.locator("#status")).to_have_attribute("data-state", "offline")
        expect(alice.page.locator("#banner")).to_be_hidden()
        alice.page.wait_for_timeout(2000)  # longer than the capped reconnect delay
        expect(alice.page.locator("#status")).to_have_attribute("data-state", "offline")
        assert len(alice.sockets) == 2  # the first socket and the one after the restart, no third
        expect(alice.page.locator("#errors [data-testid=error]")).to_have_count(0)
    finally:
        for chat in chats:
            chat.close()
        server.stop()

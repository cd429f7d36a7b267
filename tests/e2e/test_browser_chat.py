"""The chat page at `/` driven by headless Chromium against a real `storm dev` process (docs/chat-page.md).

Two people chat live (presence, typing, messages both ways once each, markup shown as text); the sidebar
shows unread badges and switches channels on the same socket; channels created and archived elsewhere
appear and leave live; a DM is named after the other member; edit, delete, reactions (a fresh page shows
the stored counts, not doubled) and a thread reply; "load older" scrollback and date separators; any user
of any workspace in dev mode; the phone layout keeps the composer on screen.
Set STORM_E2E_SCREENSHOT=/dir to keep screenshots of the desktop and phone pages.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ci import require_module, unavailable

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 5_000
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}


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
    """One person's page, with the page errors it raised and the WebSockets it opened."""

    def __init__(self, browser: object, base: str, user: str, query: str = "",
                 viewport: dict[str, int] | None = None, days_ahead: int = 0) -> None:
        self.context = browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.page_errors: list[str] = []
        self.sockets: list[object] = []
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        self.page.on("websocket", lambda ws: self.sockets.append(ws))
        self.page.on("dialog", lambda dialog: dialog.accept())  # "Delete this message?"
        if days_ahead:  # the browser's clock only: the page reads today's messages as older ones
            self.page.clock.set_fixed_time(datetime.datetime.now() + datetime.timedelta(days=days_ahead))
        self.page.goto(f"{base}/{query}")
        self.user = user

    def join(self, channel: str = "general", workspace: str = "demo", name: str | None = None) -> Chat:
        from playwright.sync_api import expect

        page = self.page
        expect(page.locator(f"#workspace option[value='{workspace}']")).to_have_count(1)
        page.select_option("#workspace", workspace)
        page.select_option("#user", label=name or self.user.title())
        page.click("#connect")
        expect(page.locator("#status")).to_have_attribute("data-state", "online")
        self.open(channel)
        expect(page.locator("#online [data-testid=online-user]", has_text=name or self.user.title())).to_have_count(1)
        return self

    def item(self, label: str):  # type: ignore[no-untyped-def]
        """The sidebar entry of a channel or DM, by its label ("# general", "Bob")."""
        return self.page.locator("[data-testid=channel-item]").filter(
            has=self.page.locator(".label", has_text=re.compile(rf"^{re.escape(label)}$")))

    def open(self, channel: str) -> None:
        from playwright.sync_api import expect

        label = channel if channel[:1] in "#🔒" or channel[:1].isupper() else f"# {channel}"
        if self.page.locator("#channel-title").text_content() != label:
            if self.page.locator("#menu").is_visible():
                self.page.click("#menu")
            self.item(label).click()
        expect(self.page.locator("#channel-title")).to_have_text(label)

    def messages(self, text: str | None = None):  # type: ignore[no-untyped-def]
        loc = self.page.locator("#messages > [data-testid=message]")
        return loc if text is None else loc.filter(has_text=text)

    def send(self, text: str) -> None:
        self.page.fill("#message-input", text)
        self.page.click("#send")

    def no_errors(self) -> None:
        from playwright.sync_api import expect

        expect(self.page.locator("#errors [data-testid=error]")).to_have_count(0)
        assert self.page_errors == []

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def chats(browser: object, storm_dev_server: str) -> Iterator[list[Chat]]:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    opened: list[Chat] = []
    yield opened
    for chat in opened:
        chat.close()


def _open(chats: list[Chat], browser: object, base: str, user: str, channel: str = "general", **kw: Any) -> Chat:
    query = kw.pop("query", "?poll_ms=300")
    chat = Chat(browser, base, user, query, kw.pop("viewport", None), kw.pop("days_ahead", 0))
    chats.append(chat)
    return chat.join(channel, **kw)


def _rest(base: str, method: str, path: str, token: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", method=method, data=data,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _token(base: str, user: str, workspace: str = "demo") -> str:
    with urllib.request.urlopen(f"{base}/dev/token?user={user}&workspace={workspace}", timeout=5) as resp:
        return str(json.loads(resp.read())["token"])


def test_two_people_chat_live(browser: object, storm_dev_server: str, chats: list[Chat]) -> None:
    from playwright.sync_api import expect

    alice = _open(chats, browser, storm_dev_server, "alice")
    bob = _open(chats, browser, storm_dev_server, "bob")

    # presence: each sees the other (Alice learns of Bob through presence.join)
    expect(alice.page.locator("#online [data-testid=online-user]", has_text="Bob")).to_have_count(1)
    expect(bob.page.locator("#online [data-testid=online-user]", has_text="Alice")).to_have_count(1)
    expect(alice.page.locator("#online-count")).to_have_text("2")

    # typing: Bob types, Alice is told; Bob is not told about himself
    bob.page.fill("#message-input", "hmm")
    bob.page.locator("#message-input").press("Space")
    expect(alice.page.locator("#typing")).to_have_text("Bob is typing…")
    expect(bob.page.locator("#typing")).to_have_text("")

    # Alice -> Bob; markup is shown as text, never interpreted (an onerror handler never runs)
    tag = uuid.uuid4().hex[:10]
    hello = f"hi bob <b>{tag}</b> & <img src=x onerror=\"window.__pwned=1\">"
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
        assert chat.page.evaluate("window.__pwned") is None

    # Bob replies with Enter; his message also ends his "typing"
    reply = f"hello alice {tag}"
    bob.page.fill("#message-input", reply)
    bob.page.locator("#message-input").press("Enter")
    expect(alice.messages(reply)).to_have_count(1)
    expect(alice.page.locator("#typing")).to_have_text("")
    expect(alice.messages().locator("[data-testid=message-text]")).to_have_text([hello, reply])
    expect(alice.page.locator("#messages > [data-testid=day]")).to_have_text(["Today"])  # a date separator

    # Carol, joining later, gets both from history (oldest first, once each); her leave is seen
    carol = _open(chats, browser, storm_dev_server, "carol")
    expect(carol.messages().locator("[data-testid=message-text]")).to_have_text([hello, reply])
    expect(alice.page.locator("#online [data-testid=online-user]", has_text="Carol")).to_have_count(1)
    carol.close()
    chats.remove(carol)
    expect(alice.page.locator("#online [data-testid=online-user]", has_text="Carol")).to_have_count(0)

    for chat in (alice, bob):
        chat.no_errors()
        expect(chat.page.locator("#status")).to_have_attribute("data-state", "online")


def test_unread_badges_and_switching_channels_on_one_socket(
        browser: object, storm_dev_server: str, chats: list[Chat]) -> None:
    from playwright.sync_api import expect

    alice = _open(chats, browser, storm_dev_server, "alice", "general")
    bob = _open(chats, browser, storm_dev_server, "bob", "random")
    tag = uuid.uuid4().hex[:8]
    bob.send(f"in random {tag} 1")
    bob.send(f"in random {tag} 2")
    badge = alice.item("# random").locator("[data-testid=unread]")
    expect(badge).to_have_text("2")  # Alice is in #general: #random counts what she has not read

    alice.open("random")
    expect(alice.messages(f"in random {tag} 2")).to_have_count(1)
    expect(badge).to_have_count(0)
    alice.open("general")
    alice.open("random")  # back again: history, nothing twice
    expect(alice.messages(f"in random {tag}")).to_have_count(2)
    assert len(alice.sockets) == 1  # switching channels never reconnects

    # read state is the server's: a fresh page of Carol, who never opened #random, shows its unread count
    # (from `subscribed`); a fresh page of Alice, who read it above, shows none
    carol = _open(chats, browser, storm_dev_server, "carol", "general")
    expect(carol.item("# random").locator("[data-testid=unread]")).to_have_text(re.compile(r"^([2-9]|\d\d+)$"))
    again = _open(chats, browser, storm_dev_server, "alice", "bench")
    expect(again.item("# random")).to_have_count(1)
    expect(again.item("# random").locator("[data-testid=unread]")).to_have_count(0)

    # her own messages, written on another device, are not unread; Bob's are
    alice.send(f"from alice's first page {tag}")
    expect(alice.messages(f"from alice's first page {tag}")).to_have_attribute("data-delivered", "true")
    expect(again.item("# general").locator("[data-testid=unread]")).to_have_count(0)
    bob.open("general")
    bob.send(f"bob in general {tag}")
    expect(again.item("# general").locator("[data-testid=unread]")).to_have_text("1")
    for chat in (alice, bob, carol, again):
        chat.no_errors()


def test_new_and_archived_channels_appear_live_and_a_dm_is_named_after_the_other(
        browser: object, storm_dev_server: str, chats: list[Chat]) -> None:
    from playwright.sync_api import expect

    alice = _open(chats, browser, storm_dev_server, "alice")
    bob = _open(chats, browser, storm_dev_server, "bob")
    name = f"launch-{uuid.uuid4().hex[:6]}"
    token = _token(storm_dev_server, "bob")
    made = _rest(storm_dev_server, "POST", "/v1/workspaces/demo/channels", token, {"name": name})
    expect(alice.item(f"# {name}")).to_have_count(1)  # the sidebar learns of it without a reload
    bob.open(name)
    bob.send("first in the new channel")
    expect(alice.item(f"# {name}").locator("[data-testid=unread]")).to_have_text("1")

    _rest(storm_dev_server, "POST", f"/v1/workspaces/demo/channels/{made['id']}/archive", token)
    expect(alice.item(f"# {name}")).to_have_count(0)  # archived: it leaves the sidebar
    expect(bob.page.locator("#message-input")).to_be_disabled()  # open where it was archived: read-only
    expect(bob.page.locator("#banner")).to_contain_text("archived")

    # a DM: each side sees it named after the other member
    members = _rest(storm_dev_server, "GET", "/v1/workspaces/demo/members", token)["members"]
    carol_id = next(m["user_id"] for m in members if m["name"] == "Carol")
    _rest(storm_dev_server, "POST", "/v1/workspaces/demo/channels", token, {"kind": "direct", "members": [carol_id]})
    expect(bob.page.locator("#dm-list").locator("[data-testid=channel-item]", has_text="Carol")).to_have_count(1)
    carol = _open(chats, browser, storm_dev_server, "carol", "Bob")
    carol.send("hi Bob, DM")
    expect(carol.messages("hi Bob, DM")).to_have_attribute("data-delivered", "true")
    bob.open("Carol")
    expect(bob.messages("hi Bob, DM")).to_have_count(1)
    for chat in (alice, carol):
        chat.no_errors()


def test_edit_delete_react_and_reply_in_a_thread(browser: object, storm_dev_server: str, chats: list[Chat]) -> None:
    from playwright.sync_api import expect

    alice = _open(chats, browser, storm_dev_server, "alice", "bench")
    bob = _open(chats, browser, storm_dev_server, "bob", "bench")
    tag = uuid.uuid4().hex[:8]
    alice.send(f"draft {tag}")
    mine = alice.messages(f"draft {tag}")
    expect(mine).to_have_attribute("data-delivered", "true")
    expect(bob.messages(f"draft {tag}").locator("[data-action=edit]")).to_be_hidden()  # not his to edit

    # edit at once: the message becomes editable once stored, and the page retries `not_found` until then
    mine.hover()
    mine.locator("[data-action=edit]").click()
    alice.page.fill("[data-testid=edit-input]", f"final {tag}")
    alice.page.click("[data-testid=edit-save]")
    expect(bob.messages(f"final {tag}")).to_have_count(1)
    expect(bob.messages(f"final {tag}").locator(".edited")).to_be_visible()
    theirs = bob.messages(f"final {tag}")

    # react: Bob adds 👍, both see 1; Bob's chip is his own; a reload shows 1, not 2
    theirs.hover()
    theirs.locator("[data-action=react]").click()
    bob.page.click("[data-testid=emoji-palette] [data-emoji='👍']")
    for chat in (alice, bob):
        expect(chat.messages(f"final {tag}").locator("[data-testid=reaction]")).to_have_text(["👍 1"])
    expect(theirs.locator("[data-testid=reaction].mine")).to_have_count(1)
    bob.page.reload()
    bob.join("bench")
    theirs = bob.messages(f"final {tag}")
    expect(theirs.locator("[data-testid=reaction]")).to_have_text(["👍 1"])
    expect(theirs.locator("[data-testid=reaction].mine")).to_have_count(1)
    theirs.locator("[data-testid=reaction]").click()  # toggles his own off
    expect(alice.messages(f"final {tag}").locator("[data-testid=reaction]")).to_have_count(0)

    # thread: Bob replies in the pane; Alice sees "1 reply", opens the thread and sees it
    theirs.hover()
    theirs.locator(".actions [data-action=thread]").click()
    expect(bob.page.locator("#thread")).to_be_visible()
    bob.page.fill("#thread-input", f"reply {tag}")
    bob.page.locator("#thread-input").press("Enter")
    expect(alice.messages(f"final {tag}").locator("[data-testid=replies]")).to_have_text("1 reply")
    expect(alice.messages(f"reply {tag}")).to_have_count(0)  # not in the channel's main list
    alice.messages(f"final {tag}").locator("[data-testid=replies]").click()
    expect(alice.page.locator("#thread-messages [data-testid=message]", has_text=f"reply {tag}")).to_have_count(1)
    alice.page.click("#thread-close")

    # delete: her own message reads "(message deleted)" everywhere
    mine = alice.messages(f"final {tag}")
    mine.hover()
    mine.locator("[data-action=delete]").click()
    expect(bob.messages(f"final {tag}")).to_have_count(0)
    expect(bob.page.locator("#messages .message.deleted")).to_have_count(1)
    for chat in (alice, bob):
        chat.no_errors()


def test_load_older_scrollback(browser: object, storm_dev_server: str, chats: list[Chat]) -> None:
    from playwright.sync_api import expect

    alice = _open(chats, browser, storm_dev_server, "alice")
    name = f"busy-{uuid.uuid4().hex[:6]}"
    token = _token(storm_dev_server, "alice")
    _rest(storm_dev_server, "POST", "/v1/workspaces/demo/channels", token, {"name": name})
    alice.open(name)
    for i in range(60):  # the page shows the newest 50 on opening
        alice.page.fill("#message-input", f"m{i:02d}")
        alice.page.locator("#message-input").press("Enter")
    expect(alice.messages("m59")).to_have_attribute("data-delivered", "true")
    late = _open(chats, browser, storm_dev_server, "bob", name, days_ahead=1)  # read "tomorrow"
    expect(late.messages()).to_have_count(50)
    expect(late.page.locator("#messages > [data-testid=day]")).to_have_text(["Yesterday"])
    expect(late.page.locator("[data-testid=load-older]")).to_be_visible()
    late.page.click("[data-testid=load-older]")
    expect(late.messages()).to_have_count(60)
    texts = late.messages().locator("[data-testid=message-text]").all_text_contents()
    assert texts == [f"m{i:02d}" for i in range(60)]  # oldest first, each once
    expect(late.page.locator("[data-testid=load-older]")).to_be_hidden()
    expect(late.page.locator("#messages > [data-testid=day]")).to_have_text(["Yesterday"])  # one per day
    later = _open(chats, browser, storm_dev_server, "carol", name, days_ahead=3)
    weekday = datetime.datetime.now().strftime("%A")  # the messages were written today
    expect(later.page.locator("#messages > [data-testid=day]")).to_have_text([re.compile(rf"^{weekday}, ")])
    late.no_errors()


def test_any_user_of_any_workspace_in_dev_mode(browser: object, storm_dev_server: str, chats: list[Chat]) -> None:
    from playwright.sync_api import expect

    slug = f"acme-{uuid.uuid4().hex[:6]}"
    owner = _token(storm_dev_server, "zed", "*")
    _rest(storm_dev_server, "POST", "/v1/workspaces", owner, {"slug": slug, "name": "Acme Corp"})
    bound = _token(storm_dev_server, "zed", slug)
    _rest(storm_dev_server, "POST", f"/v1/workspaces/{slug}/members", bound,
          {"subject": "auth0|64f00ba7", "name": "Xena Okafor"})  # not a dev user: picked by user id
    _rest(storm_dev_server, "POST", f"/v1/workspaces/{slug}/channels", bound, {"name": "ops"})
    xena = _open(chats, browser, storm_dev_server, "xena", "ops", workspace=slug, name="Xena Okafor")
    expect(xena.page.locator("#me")).to_have_text("Xena Okafor")
    expect(xena.page.locator("#ws-name")).to_have_text("Acme Corp")
    xena.send("hello from acme")
    expect(xena.messages("hello from acme")).to_have_attribute("data-delivered", "true")

    # the same page, another user of the same workspace: the view is rebuilt for them (her message is not
    # theirs to edit), then another workspace: nothing of Acme's left on it
    xena.page.click("#connect")  # Disconnect
    expect(xena.page.locator("#status")).to_have_attribute("data-state", "offline")
    xena.join("ops", workspace=slug, name="Zed")
    expect(xena.page.locator("#me")).to_have_text("Zed")
    expect(xena.messages("hello from acme")).to_have_count(1)
    expect(xena.messages("hello from acme")).not_to_have_class(re.compile(r"\bown\b"))
    xena.page.click("#connect")
    expect(xena.page.locator("#status")).to_have_attribute("data-state", "offline")
    xena.user = "dave"
    xena.join("general")
    expect(xena.page.locator("#me")).to_have_text("Dave")
    expect(xena.page.locator("#ws-name")).to_have_text("Demo workspace")
    expect(xena.messages("hello from acme")).to_have_count(0)
    expect(xena.item("# ops")).to_have_count(0)
    xena.no_errors()


def test_phone_layout_keeps_the_composer_visible(browser: object, storm_dev_server: str, chats: list[Chat]) -> None:
    from playwright.sync_api import expect

    phone = _open(chats, browser, storm_dev_server, "dave", "random", viewport=PHONE)
    for i in range(25):  # more than a screenful
        phone.send(f"phone line {i}")
    expect(phone.messages("phone line 24")).to_have_attribute("data-delivered", "true")
    box = phone.page.locator("#message-input").bounding_box()
    assert box is not None and box["y"] + box["height"] <= PHONE["height"] and box["x"] >= 0
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scroll
    expect(phone.page.locator("#sidebar")).not_to_be_in_viewport()  # a drawer behind ☰
    phone.page.click("#menu")
    expect(phone.page.locator("#sidebar")).to_be_in_viewport()
    phone.item("# general").click()
    expect(phone.page.locator("#channel-title")).to_have_text("# general")
    expect(phone.page.locator("#sidebar")).not_to_be_in_viewport()
    phone.no_errors()
    shots = os.environ.get("STORM_E2E_SCREENSHOT")
    if shots:
        phone.page.screenshot(path=str(Path(shots) / "phone.png"))

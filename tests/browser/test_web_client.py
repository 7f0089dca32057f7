"""The web client as people use it: two or three browser contexts (separate storage, so separate
users) on one `roomcast dev`, driven only through the accessible names of the client's contract:

- the name field is labelled "Your name";
- the message box is a textbox labelled "Message" (Enter sends);
- the active users are a list labelled "Active users" whose entries are buttons named exactly
  after each user (clicking one starts a private room);
- an invitation is a link whose text contains "join";
- every message is a "listitem" in a list labelled "Messages", its text holding author and body.

Waits are bounded `expect(...)` assertions (nothing sleeps), and nothing asserts how fast
anything happened.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect  # scripts/install-browser.sh installs it

from tests.support.dev_process import DevProcess

from .conftest import DESKTOP, PHONE, ChatPage, OpenUser, unique

pytestmark = pytest.mark.browser

# A restarted server is found by the client's own reconnect loop, whose backoff (with jitter)
# grows while the server is down; this bounds the wait, it does not measure it.
RECONNECT_MS = 45_000


def positions(user: ChatPage, bodies: list[str]) -> list[int]:
    """Where each body is in the user's message list (index of the first entry holding it)."""
    texts = user.messages.get_by_role("listitem").all_inner_texts()
    found = []
    for body in bodies:
        hits = [i for i, text in enumerate(texts) if body in text]
        assert hits, f"{body!r} is not in {user.name}'s messages: {texts}"
        found.append(hits[0])
    return found


def reconnected(*users: ChatPage) -> None:
    """Each page is connected again by itself, still chatting as the same user."""
    for user in users:
        expect(user.page.get_by_text("Connected", exact=True)).to_be_visible(timeout=RECONNECT_MS)
        expect(user.box).to_be_visible()
        expect(user.page.get_by_label("Your name", exact=True)).to_be_hidden()
        expect(user.page.get_by_text(f"Signed in as {user.name}")).to_be_visible()


def expect_once(user: ChatPage, author: str, body: str, timeout: float | None = None) -> None:
    """The message is in the user's list exactly once, shown with its author, and confirmed."""
    item = user.message(body)
    expect(item).to_have_count(1, timeout=timeout)
    expect(item).to_contain_text(author)
    expect(item).not_to_contain_text("Sending")


# ---- presence, typing, chat --------------------------------------------------------------------
def test_two_users_see_each_other_type_and_chat(server: DevProcess, open_user: OpenUser) -> None:
    a, b = unique("alice"), unique("bob")
    alice = open_user(a, server)
    bob = open_user(b, server)

    # Each sees both names as buttons, named exactly after the user.
    for user in (alice, bob):
        expect(user.user_button(a)).to_be_visible()
        expect(user.user_button(b)).to_be_visible()

    # Typing shows on the other page.
    bob.box.press_sequentially("hel")
    typing = alice.page.get_by_text(f"{b} is typing")
    expect(typing).to_be_visible()

    hello = unique("hello alice")
    bob.box.fill(hello)
    bob.box.press("Enter")
    expect(bob.box).to_have_value("")
    expect_once(alice, b, hello)
    expect_once(bob, b, hello)
    # Bob's message ends his typing note (it fades out: the line loses its "visible" state).
    expect(typing).not_to_have_class(re.compile(r"\bvisible\b"))

    reply = unique("hi bob")
    alice.send(reply)
    expect_once(bob, a, reply)
    expect_once(alice, a, reply)
    for user in (alice, bob):
        first, second = positions(user, [hello, reply])
        assert first < second, f"{user.name} shows the reply before the message it answers"


def test_three_users_join_chat_and_leave(server: DevProcess, open_user: OpenUser) -> None:
    names = [unique("ann"), unique("ben"), unique("cat")]
    ann, ben, cat = (open_user(name, server) for name in names)
    for user in (ann, ben, cat):
        for name in names:
            expect(user.user_button(name)).to_be_visible()

    bodies = {}
    for user in (ann, ben, cat):
        bodies[user.name] = unique(f"from {user.name}")
        user.send(bodies[user.name])
    for user in (ann, ben, cat):
        for author, body in bodies.items():
            expect_once(user, author, body)

    # Closing a page leaves the room: the others see the name go.
    cat.context.close()
    for user in (ann, ben):
        expect(user.user_button(cat.name)).to_have_count(0)
        expect(user.user_button(ann.name)).to_be_visible()
        expect(user.user_button(ben.name)).to_be_visible()


# ---- private rooms -----------------------------------------------------------------------------
def test_private_room_by_invitation_link_refuses_a_third_user(
    server: DevProcess, open_user: OpenUser
) -> None:
    a, b, c = unique("alice"), unique("bob"), unique("carol")
    alice, bob, carol = open_user(a, server), open_user(b, server), open_user(c, server)
    for user in (alice, bob, carol):
        for name in (a, b, c):
            expect(user.user_button(name)).to_be_visible()
    in_main = unique("everyone can read this")
    carol.send(in_main)
    expect_once(alice, c, in_main)

    # Alice picks Bob in the active users: a private room with Bob opens for her.
    alice.user_button(b).click()
    expect(alice.page.get_by_role("heading", name=b, exact=True)).to_be_visible()
    expect(alice.page).to_have_url(re.compile(r"\?room="))

    # Bob gets the invitation as a link in his messages; Carol gets nothing.
    invitation = bob.messages.get_by_role("listitem").filter(has_text=a)
    link = invitation.get_by_role("link", name=re.compile("join"))
    expect(link).to_be_visible()
    href = link.get_attribute("href")
    assert href and "room=" in href, href
    expect(carol.messages.get_by_role("link", name=re.compile("join"))).to_have_count(0)

    # Bob follows the link: he is in the private room with Alice, and both see both.
    link.click()
    expect(bob.page.get_by_role("heading", name=a, exact=True)).to_be_visible()
    for user in (alice, bob):
        expect(user.user_button(a)).to_be_visible()
        expect(user.user_button(b)).to_be_visible()
        expect(user.user_button(c)).to_have_count(0)
        expect(user.message(in_main)).to_have_count(0)  # the room has its own history

    secret = unique("just between us")
    bob.send(secret)
    expect_once(alice, b, secret)
    answer = unique("agreed")
    alice.send(answer)
    expect_once(bob, a, answer)

    # Carol opens the same link: the room is private to Alice and Bob, so she is refused
    # and stays in #main, seeing none of its messages.
    carol.page.goto(href if href.startswith("http") else server.http + href)
    room = href.split("room=", 1)[1]
    expect(carol.page.get_by_role("alert").filter(has_text=room)).to_be_visible()
    expect(carol.page).to_have_url(server.http + "/")
    expect(carol.box).to_be_visible()
    expect(carol.message(in_main)).to_have_count(1)
    for body in (secret, answer):
        expect(carol.message(body)).to_have_count(0)
    rooms = carol.page.get_by_role("navigation", name="Rooms")
    expect(rooms.get_by_role("link", name="main", exact=True)).to_be_visible()
    expect(rooms.get_by_role("link").filter(has_text=room)).to_have_count(0)
    expect(rooms.get_by_role("link", name=re.compile(re.escape(a)))).to_have_count(0)

    # The private messages stay out of #main for its members too.
    alice.page.get_by_role("navigation", name="Rooms").get_by_role(
        "link", name="main", exact=True
    ).click()
    expect_once(alice, c, in_main)
    expect(alice.message(secret)).to_have_count(0)


# ---- restart of the server ---------------------------------------------------------------------
def test_pages_reconnect_after_a_restart_without_lost_or_doubled_messages(
    own_server: DevProcess, open_user: OpenUser
) -> None:
    a, b = unique("alice"), unique("bob")
    alice, bob = open_user(a, own_server), open_user(b, own_server)
    expect(alice.user_button(b)).to_be_visible()

    before = unique("before the restart")
    alice.send(before)
    expect_once(alice, a, before)  # acknowledged, so stored
    expect_once(bob, a, before)

    own_server.stop()  # SIGINT, and wait for the process to exit
    for user in (alice, bob):
        expect(user.page.get_by_text("Connection lost")).to_be_visible()

    # Written while the server is down: kept, marked as not sent yet, sent on reconnect.
    queued = unique("typed while down")
    bob.send(queued)
    expect(bob.message(queued)).to_contain_text("Sending")

    own_server.start()  # same port, same data dir
    own_server.wait_ready()
    reconnected(alice, bob)
    expect_once(bob, b, queued, timeout=RECONNECT_MS)
    expect_once(alice, b, queued, timeout=RECONNECT_MS)

    after_a, after_b = unique("after from alice"), unique("after from bob")
    alice.send(after_a)
    bob.send(after_b)
    sent = [(a, before), (b, queued), (a, after_a), (b, after_b)]
    for user in (alice, bob):
        for author, body in sent:
            expect_once(user, author, body)
        order = positions(user, [before, queued, after_a])
        assert order == sorted(order), f"{user.name}: {order}"

    # The history the restarted server holds has each message once, in order.
    carol = open_user(unique("carol"), own_server)
    for author, body in sent:
        expect_once(carol, author, body)
    order = positions(carol, [before, queued, after_a])
    assert order == sorted(order), order


def test_private_room_survives_a_restart(own_server: DevProcess, open_user: OpenUser) -> None:
    a, b = unique("alice"), unique("bob")
    alice, bob = open_user(a, own_server), open_user(b, own_server)
    alice.user_button(b).click()
    link = bob.messages.get_by_role("link", name=re.compile("join"))
    expect(link).to_be_visible()
    href = link.get_attribute("href")
    assert href
    link.click()
    for user in (alice, bob):
        expect(user.user_button(a)).to_be_visible()
        expect(user.user_button(b)).to_be_visible()
    before = unique("private before")
    bob.send(before)
    expect_once(alice, b, before)

    own_server.stop()
    for user in (alice, bob):
        expect(user.page.get_by_text("Connection lost")).to_be_visible()
    own_server.start()
    own_server.wait_ready()
    reconnected(alice, bob)

    # Both are back in the private room, as the same users, with its history once.
    expect(alice.page.get_by_role("heading", name=b, exact=True)).to_be_visible()
    expect(bob.page.get_by_role("heading", name=a, exact=True)).to_be_visible()
    after = unique("private after")
    alice.send(after)
    for user in (alice, bob):
        expect(user.user_button(a)).to_be_visible(timeout=RECONNECT_MS)
        expect(user.user_button(b)).to_be_visible(timeout=RECONNECT_MS)
        expect_once(user, b, before)
        expect_once(user, a, after)

    # The room is still private to the two of them.
    carol = open_user(unique("carol"), own_server, path=href[href.index("/?") :])
    room = href.split("room=", 1)[1]
    expect(carol.page.get_by_role("alert").filter(has_text=room)).to_be_visible()
    expect(carol.message(before)).to_have_count(0)
    expect(carol.message(after)).to_have_count(0)


# ---- markup is text ----------------------------------------------------------------------------
def test_markup_in_a_message_is_shown_as_text_and_never_run(
    server: DevProcess, open_user: OpenUser
) -> None:
    # bypass_csp: the page's Content-Security-Policy would block the inline handler anyway;
    # this checks that the client itself never turns message text into HTML.
    a, b = unique("alice"), unique("bob")
    alice = open_user(a, server, bypass_csp=True)
    bob = open_user(b, server, bypass_csp=True)
    expect(alice.user_button(b)).to_be_visible()

    payloads = ["<img src=x onerror=alert(1)>", '"><svg onload=alert(2)><b>bold</b>']
    for payload in payloads:
        alice.send(payload)
    done = unique("after the markup")
    alice.send(done)

    for user in (alice, bob):
        expect_once(user, a, done)
        for payload in payloads:
            expect(user.message(payload)).to_have_count(1)
            expect(user.messages.get_by_text(payload, exact=True)).to_be_visible()
        expect(user.messages.locator("img[src='x']")).to_have_count(0)
        expect(user.page.locator("img[src='x'], svg[onload], [onerror]")).to_have_count(0)
        expect(user.messages.locator("b")).to_have_count(0)
        assert user.dialogs == [], f"{user.name}: a dialog was raised: {user.dialogs}"

    # Control: the same markup put in as HTML would have raised a dialog in this page, and the
    # test would have seen it.
    with bob.page.expect_event("dialog"):
        bob.page.evaluate(
            "document.body.insertAdjacentHTML('beforeend', '<img src=x onerror=alert(1)>')"
        )
    assert bob.dialogs == ["alert: 1"], bob.dialogs


# ---- phone-sized screen ------------------------------------------------------------------------
def test_phone_sized_screen_can_chat(server: DevProcess, open_user: OpenUser) -> None:
    a, b = unique("desk"), unique("phone")
    desk = open_user(a, server)
    phone = open_user(b, server, viewport=PHONE, is_mobile=True, has_touch=True)

    # The message box sits at the bottom of the screen, and nothing is wider than the screen.
    expect(phone.box).to_be_in_viewport()
    box = phone.box.bounding_box()
    assert box is not None
    assert PHONE["height"] * 0.75 < box["y"] + box["height"] <= PHONE["height"], box
    width = phone.page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px screen"

    # The people list is in a drawer: closed at first, opened by its button.
    expect(phone.active_users).to_be_hidden()
    phone.page.get_by_role("button", name="Rooms and people").tap()
    expect(phone.user_button(a)).to_be_visible()
    expect(phone.user_button(b)).to_be_visible()
    phone.page.keyboard.press("Escape")
    expect(phone.active_users).to_be_hidden()

    by_button = unique("tapped send")
    phone.box.tap()
    phone.box.fill(by_button)
    phone.page.get_by_role("button", name="Send", exact=True).tap()
    by_enter = unique("pressed enter")
    phone.send(by_enter)
    reply = unique("got it")
    desk.send(reply)
    for user in (desk, phone):
        expect_once(user, b, by_button)
        expect_once(user, b, by_enter)
        expect_once(user, a, reply)
    expect(phone.message(reply)).to_be_in_viewport()
    assert desk.page.viewport_size == DESKTOP


# ---- names kept for their owner (protocol 2.2) ---------------------------------------------------
@contextlib.contextmanager
def holding(server: DevProcess, username: str) -> Iterator[None]:
    """A raw WebSocket client that holds `username` while the block runs (retrying while
    presence still counts the page's closed socket)."""
    from websockets.sync.client import connect

    join = {"event": "userJoin", "data": {"username": username, "room": "main"}, "ref": "1"}
    for _ in range(50):
        with connect(f"{server.ws}/ws") as socket:
            socket.send(json.dumps(join))
            frame: dict[str, Any] = {}
            while frame.get("ref") != "1":
                frame = json.loads(socket.recv(timeout=10))
            if frame["event"] == "ack":
                yield
                return
            assert frame["data"]["code"] == "username_taken", frame
        time.sleep(0.1)  # presence has not seen the page's socket close yet
    raise AssertionError(f"{username!r} never became free")


def test_a_page_keeps_its_session_while_its_name_is_held(
    own_server: DevProcess, open_user: OpenUser
) -> None:
    """The page comes back while someone else holds its name: it never forgets its session for
    `username_taken`, says why it waits, and is back as itself once the name is free."""
    own_server.stop()
    own_server.env = {"ROOMCAST_NAME_GRACE_SECONDS": "0"}  # let another take the name at once
    own_server.start()
    own_server.wait_ready()
    a = unique("alice")
    alice = open_user(a, own_server)
    identity = alice.page.evaluate("localStorage.getItem('roomcast.identity')")
    assert identity and json.loads(identity)["session"]

    alice.page.goto("about:blank")  # the page goes away, its socket closes
    with holding(own_server, a):
        alice.page.goto(own_server.http + "/")
        expect(alice.page.get_by_text("is still held by your previous connection")).to_be_visible()
        expect(alice.page.get_by_label("Your name", exact=True)).to_be_hidden()
        assert alice.page.evaluate("localStorage.getItem('roomcast.identity')") == identity
    reconnected(alice)
    expect(alice.page.get_by_text("You're back as")).to_be_visible(timeout=RECONNECT_MS)
    assert alice.page.evaluate("localStorage.getItem('roomcast.identity')") == identity
    body = unique("back as myself")
    alice.send(body)
    expect_once(alice, a, body)

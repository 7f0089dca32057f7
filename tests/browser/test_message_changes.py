"""Messages that change, in the web client (PROTOCOL.md 2.3): edits, deletes, reactions, unread
badges and the "new messages" line, seen receipts, and a reconnect that recovers changes.

Driven, like test_web_client.py, through what a user sees and the accessible names of the
client's controls:
- each message has buttons "Add reaction", and on one's own "Edit message" and "Delete message"
  (shown on hover or focus);
- while a message is edited, a bar says "Editing message"; the delete asks in a dialog named
  "Delete this message?" with "Cancel" and "Delete";
- the picker is a group "Pick a reaction" of buttons "React with EMOJI"; each reaction under a
  message is a toggle button "EMOJI COUNT", pressed when it holds one's own;
- an edited message says "edited", a deleted one "message deleted";
- a room's link in the "Rooms" navigation holds its unread count; the "new messages" line is a
  separator named "New messages"; "Seen" goes under the last message the other member read.
"""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Locator, WebSocket, expect

from tests.support.dev_process import DevProcess

from .conftest import PHONE, ChatPage, OpenUser, unique
from .test_web_client import RECONNECT_MS, expect_once, positions, reconnected

pytestmark = pytest.mark.browser


def tool(user: ChatPage, body: str, name: str) -> Locator:
    """The message's tool button `name`, shown (tools appear while the pointer is on it)."""
    item = user.message(body)
    item.hover()
    return item.get_by_role("button", name=name, exact=True)


def edit(user: ChatPage, body: str, new_body: str) -> None:
    tool(user, body, "Edit message").click()
    expect(user.page.get_by_text("Editing message")).to_be_visible()
    expect(user.box).to_have_value(body)
    user.box.fill(new_body)
    user.box.press("Enter")
    expect(user.page.get_by_text("Editing message")).to_be_hidden()


def delete(user: ChatPage, body: str) -> None:
    tool(user, body, "Delete message").click()
    dialog = user.page.get_by_role("dialog", name="Delete this message?")
    expect(dialog).to_contain_text(body)
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(dialog).to_be_hidden()


def react(user: ChatPage, body: str, emoji: str) -> None:
    tool(user, body, "Add reaction").click()
    picker = user.page.get_by_role("group", name="Pick a reaction")
    picker.get_by_role("button", name=f"React with {emoji}", exact=True).click()
    expect(picker).to_be_hidden()


def chip(user: ChatPage, body: str, emoji: str) -> Locator:
    """The reaction toggle for `emoji` under the message."""
    return user.message(body).get_by_role("button", name=re.compile(f"^{re.escape(emoji)} \\d+$"))


def rooms_link(user: ChatPage, room: str) -> Locator:
    nav = user.page.get_by_role("navigation", name="Rooms")
    return nav.get_by_role("link", name=re.compile(rf"\b{re.escape(room)}\b"))


def has_marker(frame: str | bytes, room: str) -> bool:
    """The frame (one event per line: batch=1) holds the user's own readMarker in `room`."""
    events = [json.loads(line) for line in str(frame).splitlines() if line.strip()]
    return any(e["event"] == "readMarker" and e.get("room") == room for e in events)


def two_users(server: DevProcess, open_user: OpenUser) -> tuple[ChatPage, ChatPage]:
    """Alice and Bob in a room of this test alone (its history holds only what they write)."""
    path = f"/?room={unique('room')}"
    alice = open_user(unique("alice"), server, path=path)
    bob = open_user(unique("bob"), server, path=path)
    expect(alice.user_button(bob.name)).to_be_visible()
    expect(bob.user_button(alice.name)).to_be_visible()
    return alice, bob


def sent(user: ChatPage, *others: ChatPage, prefix: str) -> str:
    """A message sent by `user`, once it is shown to everyone."""
    body = unique(prefix)
    user.send(body)
    for reader in (user, *others):
        expect_once(reader, user.name, body)
    return body


# ---- edit -------------------------------------------------------------------------------------
def test_edit_own_message_by_button_and_by_up_arrow(
    server: DevProcess, open_user: OpenUser
) -> None:
    alice, bob = two_users(server, open_user)
    first = sent(alice, bob, prefix="frist")
    second = sent(alice, bob, prefix="secnod")
    from_bob = sent(bob, alice, prefix="bobs")

    # Only one's own messages can be edited.
    expect(tool(alice, from_bob, "Edit message")).to_have_count(0)
    expect(tool(alice, from_bob, "Add reaction")).to_have_count(1)

    fixed = unique("first, fixed")
    edit(alice, first, fixed)
    for user in (alice, bob):
        expect_once(user, alice.name, fixed)
        expect(user.message(fixed)).to_contain_text("edited")
        expect(user.message(first)).to_have_count(0)
        expect(user.message(second)).not_to_contain_text("edited")
        assert positions(user, [fixed, second]) == sorted(positions(user, [fixed, second]))

    # Up arrow in the empty box edits one's own last message (Bob wrote after it); Escape
    # cancels and leaves it as it was.
    alice.box.fill("")
    alice.box.press("ArrowUp")
    expect(alice.page.get_by_text("Editing message")).to_be_visible()
    expect(alice.box).to_have_value(second)
    alice.box.press("Escape")
    expect(alice.page.get_by_text("Editing message")).to_be_hidden()
    expect(alice.box).to_have_value("")
    expect(alice.message(second)).not_to_contain_text("edited")

    alice.box.press("ArrowUp")
    expect(alice.box).to_have_value(second)
    second_fixed = unique("second, fixed")
    alice.box.fill(second_fixed)
    alice.box.press("Enter")
    expect(alice.box).to_have_value("")
    for user in (alice, bob):
        expect_once(user, alice.name, second_fixed)
        expect(user.message(second_fixed)).to_contain_text("edited")
        expect(user.message(second)).to_have_count(0)
        expect(user.message(from_bob)).not_to_contain_text("edited")


# ---- delete -----------------------------------------------------------------------------------
def test_delete_asks_first_then_leaves_a_tombstone_in_place(
    server: DevProcess, open_user: OpenUser
) -> None:
    alice, bob = two_users(server, open_user)
    before = sent(alice, bob, prefix="before")
    doomed = sent(alice, bob, prefix="regrettable")
    after = sent(bob, alice, prefix="after")

    # Cancel keeps the message.
    tool(alice, doomed, "Delete message").click()
    dialog = alice.page.get_by_role("dialog", name="Delete this message?")
    expect(dialog).to_contain_text(doomed)
    dialog.get_by_role("button", name="Cancel", exact=True).click()
    expect(dialog).to_be_hidden()
    expect_once(alice, alice.name, doomed)

    delete(alice, doomed)
    for user in (alice, bob):
        expect(user.message(doomed)).to_have_count(0)
        tombstone = user.message("message deleted")
        expect(tombstone).to_have_count(1)
        expect(tombstone).to_contain_text(alice.name)
        order = positions(user, [before, "message deleted", after])
        assert order == sorted(order), f"{user.name}: the tombstone is not in place: {order}"
        expect(tombstone.get_by_role("button")).to_have_count(0)  # nothing left to change
    assert alice.dialogs == [], alice.dialogs  # the in-page dialog, never window.confirm


# ---- reactions ----------------------------------------------------------------------------------
def test_reactions_count_per_emoji_highlight_ones_own_and_toggle(
    server: DevProcess, open_user: OpenUser
) -> None:
    alice, bob = two_users(server, open_user)
    body = sent(alice, bob, prefix="react to me")

    react(bob, body, "👍")
    for user, pressed in ((alice, "false"), (bob, "true")):
        expect(chip(user, body, "👍")).to_have_text("👍 1")
        expect(chip(user, body, "👍")).to_have_attribute("aria-pressed", pressed)

    chip(alice, body, "👍").click()  # a reaction's button adds one's own too
    react(alice, body, "🎉")
    for user in (alice, bob):
        expect(chip(user, body, "👍")).to_have_text("👍 2")
        expect(chip(user, body, "🎉")).to_have_text("🎉 1")
    expect(chip(alice, body, "👍")).to_have_attribute("aria-pressed", "true")
    expect(chip(bob, body, "🎉")).to_have_attribute("aria-pressed", "false")

    chip(bob, body, "👍").click()  # toggles Bob's off
    chip(alice, body, "🎉").click()  # the last one of an emoji: it goes
    for user in (alice, bob):
        expect(chip(user, body, "👍")).to_have_text("👍 1")
        expect(chip(user, body, "🎉")).to_have_count(0)
    expect(chip(alice, body, "👍")).to_have_attribute("aria-pressed", "true")
    expect(chip(bob, body, "👍")).to_have_attribute("aria-pressed", "false")

    # From the keyboard: the reaction keeps the focus when its message is drawn anew.
    chip(bob, body, "👍").focus()
    bob.page.keyboard.press("Enter")
    expect(chip(bob, body, "👍")).to_have_text("👍 2")
    expect(chip(bob, body, "👍")).to_have_attribute("aria-pressed", "true")
    expect(chip(bob, body, "👍")).to_be_focused()


# ---- unread badges and the "new messages" line ----------------------------------------------------
def reopen(user: ChatPage, base_url: str) -> WebSocket:
    """Opens the client again in the page (its tab keeps its rooms); returns its new socket."""
    with user.page.expect_websocket() as opened:
        user.page.goto(base_url + "/")
    expect(user.box).to_be_visible()
    return opened.value


def expect_line_between(user: ChatPage, before: str, after: str) -> None:
    """The "new messages" line is shown, right after `before` and before `after`."""
    expect(user.messages.get_by_role("separator", name="New messages")).to_be_visible()
    items = user.messages.locator(":scope > li")
    at = items.evaluate_all(
        "(lis) => lis.findIndex((li) => li.getAttribute('role') === 'separator')"
    )
    texts = items.all_inner_texts()
    assert at - 1 == max(i for i, text in enumerate(texts) if before in text), (texts, at)
    assert at + 1 == min(i for i, text in enumerate(texts) if after in text), (texts, at)


def test_unread_badge_per_room_and_the_new_messages_line(
    server: DevProcess, open_user: OpenUser
) -> None:
    lobby = unique("lobby")
    alice = open_user(unique("alice"), server, login=False)
    with alice.page.expect_websocket() as opened:
        alice.login(server.http, f"/?room={lobby}")
    socket = opened.value
    bob = open_user(unique("bob"), server, path=f"/?room={lobby}")
    expect(alice.user_button(bob.name)).to_be_visible()
    rooms_link(alice, "main").click()  # Alice looks at #main; #lobby stays joined
    expect(alice.page.get_by_role("heading", name="main", exact=True)).to_be_visible()

    # Live messages in a room not in view count up on its link.
    read = [sent(bob, prefix="read later") for _ in range(2)]
    expect(rooms_link(alice, lobby)).to_contain_text("2 unread")

    # Viewing the room clears it, and tells the server (markRead: its readMarker comes back).
    with socket.expect_event("framereceived", lambda frame: has_marker(frame, lobby)):
        rooms_link(alice, lobby).click()
    for body in read:
        expect_once(alice, bob.name, body)
    expect(rooms_link(alice, lobby)).not_to_contain_text("unread")
    rooms_link(alice, "main").click()

    # Away from the page: the join ack's count is what the server kept (3, not 5: the first two
    # were marked read).
    alice.page.goto("about:blank")
    missed = [sent(bob, prefix="missed") for _ in range(3)]
    socket = reopen(alice, server.http)
    expect(rooms_link(alice, lobby)).to_contain_text("3 unread")

    # The "new messages" line sits where Alice left off: after the last message she had read.
    with socket.expect_event("framereceived", lambda frame: has_marker(frame, lobby)):
        rooms_link(alice, lobby).click()
    for body in read + missed:
        expect_once(alice, bob.name, body)
    expect_line_between(alice, read[-1], missed[0])
    expect(rooms_link(alice, lobby)).not_to_contain_text("unread")

    # Back later, straight into the room she was in (no badge for the room in view): the line
    # is again where she left off.
    alice.page.goto("about:blank")
    later = sent(bob, prefix="later")
    reopen(alice, server.http)
    expect(alice.page.get_by_role("heading", name=lobby, exact=True)).to_be_visible()
    expect_once(alice, bob.name, later)
    expect_line_between(alice, missed[-1], later)
    expect(rooms_link(alice, lobby)).not_to_contain_text("unread")


# ---- seen receipts ---------------------------------------------------------------------------------
def test_seen_receipts_in_a_private_room(server: DevProcess, open_user: OpenUser) -> None:
    alice, bob = two_users(server, open_user)
    alice.user_button(bob.name).click()
    link = bob.messages.get_by_role("link", name=re.compile("join"))
    expect(link).to_be_visible()
    link.click()
    for user in (alice, bob):
        expect(user.user_button(alice.name)).to_be_visible()
        expect(user.user_button(bob.name)).to_be_visible()

    first = sent(alice, bob, prefix="are you there")
    expect(alice.message(first).get_by_text("Seen", exact=True)).to_be_visible()
    expect(bob.page.get_by_text("Seen", exact=True)).to_have_count(0)  # only for the author

    # Bob looks elsewhere: the next message is not seen, the receipt stays on the first.
    rooms_link(bob, "main").click()
    expect(bob.page.get_by_role("heading", name="main", exact=True)).to_be_visible()
    second = unique("still there")
    alice.send(second)
    expect_once(alice, alice.name, second)
    expect(rooms_link(bob, alice.name)).to_contain_text("1 unread")
    expect(alice.message(first).get_by_text("Seen", exact=True)).to_be_visible()
    expect(alice.message(second)).not_to_contain_text("Seen")

    # Bob comes back and reads it: the receipt moves to the second.
    rooms_link(bob, alice.name).click()
    expect_once(bob, alice.name, second)
    expect(alice.message(second).get_by_text("Seen", exact=True)).to_be_visible()
    expect(alice.page.get_by_text("Seen", exact=True)).to_have_count(1)


# ---- recovery ---------------------------------------------------------------------------------------
def test_a_reconnect_recovers_an_edit_and_a_delete_made_while_away(
    server: DevProcess, open_user: OpenUser
) -> None:
    alice, bob = two_users(server, open_user)
    kept = sent(alice, bob, prefix="to be edited")
    doomed = sent(alice, bob, prefix="to be deleted")
    last = sent(bob, alice, prefix="bob was here")

    joins: list[dict[str, object]] = []

    def watch(socket: WebSocket) -> None:
        def sent_frame(payload: str | bytes) -> None:
            frame = json.loads(payload)
            if frame.get("event") == "userJoin":
                joins.append(frame["data"])

        socket.on("framesent", sent_frame)

    bob.page.on("websocket", watch)
    bob.context.set_offline(True)
    expect(bob.page.get_by_text("No network connection")).to_be_visible()

    edited = unique("edited while bob was away")
    edit(alice, kept, edited)
    delete(alice, doomed)
    new = sent(alice, prefix="new while bob was away")
    expect(alice.message("message deleted")).to_have_count(1)
    expect_once(bob, alice.name, kept)  # offline: nothing reached him
    expect_once(bob, alice.name, doomed)

    bob.context.set_offline(False)
    reconnected(bob)
    expect_once(bob, alice.name, edited, timeout=RECONNECT_MS)
    expect(bob.message(edited)).to_contain_text("edited")
    expect(bob.message(kept)).to_have_count(0)
    expect(bob.message(doomed)).to_have_count(0)
    expect(bob.message("message deleted")).to_have_count(1)
    expect_once(bob, alice.name, new)
    order = positions(bob, [edited, "message deleted", last, new])
    assert order == sorted(order), order
    room = bob.page.url.split("room=", 1)[1]
    recovering = [data for data in joins if data.get("room") == room]
    assert recovering and all(isinstance(data.get("sinceRev"), int) for data in recovering), joins


# ---- touch screens ------------------------------------------------------------------------------------
def test_on_a_phone_a_tap_shows_a_messages_tools(server: DevProcess, open_user: OpenUser) -> None:
    path = f"/?room={unique('room')}"
    desk = open_user(unique("desk"), server, path=path)
    phone = open_user(
        unique("phone"), server, path=path, viewport=PHONE, is_mobile=True, has_touch=True
    )
    body = sent(phone, desk, prefix="from my phone")

    # No pointer hovers on a touch screen: the tools stay out of the way until a tap.
    item = phone.message(body)
    expect(item.get_by_role("button", name="Add reaction")).to_be_hidden()
    item.tap(position={"x": 8, "y": 8})
    expect(item.get_by_role("button", name="Add reaction")).to_be_visible()
    item.get_by_role("button", name="Add reaction").tap()
    phone.page.get_by_role("button", name="React with ❤️", exact=True).tap()
    expect(chip(desk, body, "❤️")).to_have_text("❤️ 1")

    item.tap(position={"x": 8, "y": 8})
    item.get_by_role("button", name="Edit message").tap()
    fixed = unique("fixed on the phone")
    phone.box.fill(fixed)
    phone.box.press("Enter")
    expect_once(desk, phone.name, fixed)
    expect(desk.message(fixed)).to_contain_text("edited")
    expect(desk.message(fixed)).to_contain_text("❤️ 1")  # an edit keeps the reactions

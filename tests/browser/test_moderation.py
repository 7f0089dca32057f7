"""What muted, kicked and banned users see in the web client (PROTOCOL.md 2.4), driven through
the backend API of a `roomcast dev` that has a key: a muted user's message is not sent and the
page says for how long; a banned user's room closes with a notice, and joining it again says
the user is banned."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.dev_process import DevProcess
from tests.support.ports import free_port

from .conftest import OpenUser, unique

pytestmark = pytest.mark.browser

API_KEY = "browser-test-api-key-0123456789"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    base = tmp_path_factory.mktemp("roomcast-dev-moderation")
    dev = DevProcess(base / "data", free_port(), base / "dev.log")
    dev.env["ROOMCAST_API_KEY"] = API_KEY
    dev.start()
    try:
        dev.wait_ready()
        yield dev
    finally:
        if dev.running:
            dev.stop()
        dev.kill()


def _backend(server: DevProcess, method: str, path: str, body: object = None) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    answer = httpx.request(method, server.http + path, json=body, headers=headers, timeout=10)
    assert answer.status_code == 204, answer.text


def test_a_muted_user_is_told_and_the_others_see_nothing(
    keyed_server: DevProcess, open_user: OpenUser
) -> None:
    ann, ben = open_user(unique("ann"), keyed_server), open_user(unique("ben"), keyed_server)
    expect(ann.user_button(ben.name)).to_be_visible()
    _backend(keyed_server, "POST", "/api/rooms/main/mutes", {"username": ben.name, "seconds": 600})
    hidden = unique("while muted")
    ben.send(hidden)
    expect(ben.page.get_by_text("You're muted in #main for 10 more minutes").first).to_be_visible()
    _backend(keyed_server, "DELETE", f"/api/rooms/main/mutes/{ben.name}")
    heard = unique("after the mute")
    ben.send(heard)
    expect(ann.message(heard)).to_have_count(1)
    expect(ann.message(hidden)).to_have_count(0)


def test_a_banned_user_leaves_the_room_and_cannot_join_it_again(
    keyed_server: DevProcess, open_user: OpenUser
) -> None:
    room = unique("lobby")
    ann = open_user(unique("ann"), keyed_server, path=f"/?room={room}")
    ben = open_user(unique("ben"), keyed_server, path=f"/?room={room}")
    expect(ann.user_button(ben.name)).to_be_visible()
    _backend(keyed_server, "POST", f"/api/rooms/{room}/bans", {"username": ben.name})
    expect(ben.page.get_by_text(f"You were removed from #{room}.")).to_be_visible()
    expect(ann.user_button(ben.name)).to_have_count(0)
    rooms = ben.page.get_by_role("navigation", name="Rooms")
    expect(rooms.get_by_text(room)).to_have_count(0)
    ben.page.goto(keyed_server.http + f"/?room={room}")  # the link again: refused
    expect(ben.page.get_by_text(f"You're banned from #{room}.")).to_be_visible()


def test_the_owner_mutes_and_bans_from_the_people_list(
    keyed_server: DevProcess, open_user: OpenUser
) -> None:
    room = unique("den")
    ann = open_user(unique("ann"), keyed_server, path=f"/?room={room}")  # first in: the owner
    expect(ann.page.get_by_role("button", name="Moderate")).to_have_count(0)  # nobody else yet
    ben = open_user(unique("ben"), keyed_server, path=f"/?room={room}")
    moderate = ann.active_users.get_by_role("button", name=f"Moderate {ben.name}", exact=True)
    expect(moderate).to_be_visible()
    expect(ben.active_users.get_by_role("button", name=f"Moderate {ann.name}")).to_have_count(0)

    moderate.click()
    menu = ann.active_users.get_by_role("group", name=f"Moderate {ben.name}")
    menu.get_by_role("button", name="Mute 10 min").click()
    expect(ann.page.get_by_text(f"{ben.name} is muted in #{room} for 10 minutes.")).to_be_visible()
    ben.send(unique("muted"))
    expect(
        ben.page.get_by_text(f"You're muted in #{room} for 10 more minutes").first
    ).to_be_visible()

    moderate.click()
    menu.get_by_role("button", name="Ban").click()
    expect(ben.page.get_by_text(f"{ann.name} removed you from #{room}.")).to_be_visible()
    expect(ann.user_button(ben.name)).to_have_count(0)
    # main is nobody's: no menu there
    ann.page.get_by_role("navigation", name="Rooms").get_by_text("main").click()
    expect(ann.user_button(ben.name)).to_be_visible()
    expect(ann.active_users.get_by_role("button", name=f"Moderate {ben.name}")).to_have_count(0)


def test_the_owner_unmutes_and_unbans(keyed_server: DevProcess, open_user: OpenUser) -> None:
    """Unmute is on every user's menu (no client is told who is muted); Unban is on the users
    this page banned, listed under "Banned by you" (no client is told who is banned)."""
    room = unique("hall")
    ann = open_user(unique("ann"), keyed_server, path=f"/?room={room}")  # the owner
    ben = open_user(unique("ben"), keyed_server, path=f"/?room={room}")
    moderate = ann.active_users.get_by_role("button", name=f"Moderate {ben.name}", exact=True)
    menu = ann.active_users.get_by_role("group", name=f"Moderate {ben.name}")
    banned = ann.page.get_by_role("list", name="Banned by you")
    expect(banned).to_be_hidden()

    moderate.click()
    menu.get_by_role("button", name="Mute 10 min").click()
    # the mute is in force once its ack is: ben writes after it, not in a race with it
    expect(ann.page.get_by_text(f"{ben.name} is muted in #{room} for 10 minutes.")).to_be_visible()
    ben.send(unique("muted"))
    expect(ben.page.get_by_text(f"You're muted in #{room}").first).to_be_visible()
    moderate.click()
    menu.get_by_role("button", name="Unmute").click()
    expect(ann.page.get_by_text(f"{ben.name} can chat in #{room} again.")).to_be_visible()
    heard = unique("heard again")
    ben.send(heard)
    expect(ann.message(heard)).to_have_count(1)

    moderate.click()
    menu.get_by_role("button", name="Ban").click()
    expect(ann.user_button(ben.name)).to_have_count(0)
    expect(banned.get_by_role("listitem")).to_have_text([ben.name + "Unban"])
    ben.page.goto(keyed_server.http + f"/?room={room}")
    expect(ben.page.get_by_text(f"You're banned from #{room}.")).to_be_visible()

    banned.get_by_role("button", name=f"Unban {ben.name}").click()
    expect(ann.page.get_by_text(f"{ben.name} may join #{room} again.")).to_be_visible()
    expect(banned).to_be_hidden()
    ben.page.goto(keyed_server.http + f"/?room={room}")  # the link again: in
    expect(ann.user_button(ben.name)).to_be_visible()
    back = unique("back in")
    ben.send(back)
    expect(ann.message(back)).to_have_count(1)


def test_a_user_the_backend_disconnects_is_told_and_not_reconnected(
    keyed_server: DevProcess, open_user: OpenUser
) -> None:
    ann, ben = open_user(unique("ann"), keyed_server), open_user(unique("ben"), keyed_server)
    expect(ann.user_button(ben.name)).to_be_visible()
    _backend(keyed_server, "POST", f"/api/users/{ben.name}/disconnect")
    expect(ben.page.get_by_text("The application disconnected you from the chat")).to_be_visible()
    expect(ann.user_button(ben.name)).to_have_count(0)  # gone, and did not come back
    ann.send(unique("after the disconnect"))
    ben.page.wait_for_timeout(1500)  # a reconnect would have brought ben back by now
    expect(ann.user_button(ben.name)).to_have_count(0)

"""`roomcast dev` as a user runs it: a real process (with its SecantusDB child) driven over real
WebSockets and HTTP, stopped with Ctrl-C, started again on the same data dir."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.chat_client import ChatClient, RefusedError
from tests.support.dev_process import DevProcess, dev_command, dev_env
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e


def suffix() -> str:
    return uuid.uuid4().hex[:8]


async def refused(client: ChatClient, event: str, data: dict[str, object]) -> str:
    with pytest.raises(RefusedError) as err:
        await client.request(event, data)
    return err.value.code


def history(client: ChatClient, room: str) -> list[dict[str, object]]:
    frames = client.received("msgHistory", room)
    assert len(frames) == 1, f"{len(frames)} msgHistory for {room}"
    data: list[dict[str, object]] = frames[0]["data"]
    return data


# bad configuration --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--port", "abc"], {}, "--port"),
        (["--port", "0"], {"ROOMCAST_RATE_BURST": "x"}, "ROOMCAST_RATE_BURST"),
    ],
    ids=["bad-flag", "bad-env-var"],
)
def test_bad_setting_exits_2_with_one_line_naming_it(tmp_path: Path, args, env, named):
    result = subprocess.run(
        dev_command(*args, "--data-dir", str(tmp_path / "data")),
        env=dev_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"stderr should be one line, got:\n{result.stderr}"
    assert named in lines[0], lines[0]


# the protocol on a running process ----------------------------------------------------------
async def test_join_typing_chat_and_leave(dev_server: DevProcess, connect):
    s = suffix()
    room, a, b = f"chat_{s}", f"alice_{s}", f"bob_{s}"
    alice, bob = await connect(dev_server), await connect(dev_server)
    await alice.join(a, room)
    assert history(alice, room) == []
    await bob.join(b, room)
    await alice.users(room, [a, b])
    joined = await alice.event("userJoin", room)
    assert joined["data"] == {"username": b, "room": room}

    assert await alice.request("userTyping", {"username": a, "room": room}) is not None
    typing = await bob.event("userTyping", room)
    assert typing["data"] == {"username": a, "room": room}

    ack = await alice.say(room, "  hello bob  ")
    assert ack["body"] == "hello bob" and ack["username"] == a and ack["room"] == room
    assert (await bob.event("updateChat", room))["data"] == ack
    reply = await bob.say(room, "hi alice")
    assert (await alice.event("updateChat", room))["data"] == reply

    assert await bob.request("userLeave", {"room": room}) == {"room": room}
    left = await alice.event("userLeave", room)
    assert left["data"] == {"username": b, "room": room}
    await alice.users(room, [a])
    assert await refused(bob, "userTyping", {"username": b, "room": room}) == "not_joined"
    await alice.settle()
    assert alice.received("userTyping") == [] and len(alice.received("updateChat")) == 1


async def test_invitations_and_private_rooms(dev_server: DevProcess, connect):
    s = suffix()
    room, lonely = f"priv_{s}", f"lonely_{s}"
    a, b, c = f"alice_{s}", f"bob_{s}", f"carol_{s}"
    alice = await connect(dev_server)
    bob = await connect(dev_server)
    carol = await connect(dev_server)
    for client, name in ((alice, a), (bob, b), (carol, c)):
        await client.join(name)
    bob_tab = await connect(dev_server)  # bob's second tab
    await bob_tab.join(b, session=bob.session)

    # An invitation to an online user reaches every connection of that user, and only them.
    await alice.join(a, room)
    invitation = await alice.request("newRoom", {"username2": b, "room": room})
    for tab in (bob, bob_tab):
        got = await tab.event("newRoom")
        assert "room" not in got  # not a room-scoped event
        assert got["data"] == invitation
    assert {k: invitation[k] for k in ("username", "username2", "room")} == {
        "username": a,
        "username2": b,
        "room": room,
    }
    assert room in invitation["url"]

    # Nobody online by that name: refused, and the room stays free.
    await alice.join(a, lonely)
    ghost = {"username2": f"ghost_{s}", "room": lonely}
    assert await refused(alice, "newRoom", ghost) == "user_offline"
    await carol.join(c, lonely)

    # The invited user joins; a third user is refused.
    await bob.join(b, room)
    await alice.users(room, [a, b])
    said = await alice.say(room, "just us")
    assert (await bob.event("updateChat", room))["data"] == said
    assert await refused(carol, "userJoin", {"username": c, "room": room}) == "room_private"
    await carol.settle()
    assert carol.received("newRoom") == [] and carol.received("updateChat", room) == []

    # The invited member goes offline; someone taking the free name has no session: refused.
    await bob_tab.close()
    await bob.close()
    left = await alice.event("userLeave", room)
    assert left["data"]["username"] == b
    impostor = await connect(dev_server)
    # 2.2: the name stays reserved for its session after its last connection closes
    assert await refused(impostor, "userJoin", {"username": b, "room": room}) == "username_taken"
    assert await refused(impostor, "userJoin", {"username": b, "room": "main"}) == "username_taken"
    await impostor.close()

    # The real member comes back with the session: admitted, with the room's history.
    assert bob.session is not None
    back = await connect(dev_server)
    ack = await back.join(b, room, session=bob.session)
    assert ack["session"] == bob.session
    assert [m["body"] for m in history(back, room)] == ["just us"]


async def test_since_recovers_exactly_the_missed_messages(dev_server: DevProcess, connect):
    s = suffix()
    room, p, c, d = f"since_{s}", f"poster_{s}", f"client_{s}", f"late_{s}"
    poster = await connect(dev_server)
    await poster.join(p, room)
    ids = [(await poster.say(room, f"m{i}"))["id"] for i in range(2)]

    client = await connect(dev_server)
    await client.join(c, room)
    last = history(client, room)[-1]["id"]
    assert last == ids[-1]
    session = client.session
    await client.close()
    await poster.event("userLeave", room)

    missed = [(await poster.say(room, f"missed {i}"))["id"] for i in range(3)]
    ids += missed
    back = await connect(dev_server)
    ack = await back.join(c, room, session=session, since=last)
    assert ack["recovered"] is True and ack["session"] == session
    assert [m["id"] for m in history(back, room)] == missed

    # More than 50 in the room, and a `since` nobody knows: not recovered, the newest 50.
    for _ in range(3):  # each connection has its own rate limit (bursts of 20)
        extra = await connect(dev_server)
        await extra.join(f"extra_{suffix()}", room)
        ids += [(await extra.say(room, f"more {n}"))["id"] for n in range(17)]
    assert len(ids) > 50
    late = await connect(dev_server)
    ack = await late.join(d, room, since="no-such-message-0001")
    assert ack["recovered"] is False
    assert [m["id"] for m in history(late, room)] == ids[-50:]


# stopping and starting ----------------------------------------------------------------------
async def test_ctrl_c_stops_cleanly_and_leaves_no_database_child(start_dev, connect):
    dev: DevProcess = await start_dev()
    client = await connect(dev)
    await client.join("alice")
    await client.say("main", "before ctrl-c")
    assert dev.leftovers(), "expected roomcast dev and its SecantusDB child to be running"

    dev.interrupt(group=True)  # Ctrl-C: SIGINT to the terminal's whole foreground group
    code = await asyncio.to_thread(dev.wait)
    assert code == 0, dev.tail()
    assert dev.leftovers() == [], f"still running after exit:\n{dev.leftovers()}\n{dev.tail()}"
    async with asyncio.timeout(10):
        await client.closed  # the open socket was closed, not left hanging
    assert "Traceback" not in dev.tail(100_000), dev.tail()


async def test_history_private_rooms_and_sessions_survive_a_restart(start_dev, connect, tmp_path):
    data = tmp_path / "data"
    dev: DevProcess = await start_dev(data)
    alice, bob = await connect(dev), await connect(dev)
    await alice.join("alice")
    await bob.join("bob")
    public = [(await alice.say("main", f"public {i}"))["body"] for i in range(3)]
    await alice.join("alice", "secret")
    await alice.request("newRoom", {"username2": "bob", "room": "secret"})
    await bob.event("newRoom")
    await bob.join("bob", "secret")
    private = [(await bob.say("secret", f"private {i}"))["body"] for i in range(2)]
    sessions = {"alice": alice.session, "bob": bob.session}
    await bob.close()

    # `kill -INT` to the process alone, with alice's socket still open.
    dev.interrupt(group=False)
    assert await asyncio.to_thread(dev.wait) == 0, dev.tail()
    assert dev.leftovers() == [], dev.leftovers()

    again: DevProcess = await start_dev(data)
    carol = await connect(again)
    await carol.join("carol")
    assert [m["body"] for m in history(carol, "main")] == public
    assert await refused(carol, "userJoin", {"username": "carol", "room": "secret"}) == (
        "room_private"
    )
    impostor = await connect(again)
    assert await refused(impostor, "userJoin", {"username": "bob", "room": "secret"}) == (
        "username_taken"  # 2.2: the reservation outlives the restart too
    )

    member = await connect(again)
    ack = await member.join("alice", "secret", session=sessions["alice"])
    assert ack["session"] == sessions["alice"]
    assert [m["body"] for m in history(member, "secret")] == private
    async with httpx.AsyncClient(base_url=again.http, timeout=10) as http:
        page = await http.get(
            "/api/rooms/secret/messages",
            headers={"Authorization": f"Bearer {sessions['bob']}"},
        )
        assert page.status_code == 200, page.text
        assert [m["body"] for m in page.json()["messages"]] == private
        assert (await http.get("/api/rooms/secret/messages")).status_code == 403

    again.interrupt(group=True)
    assert await asyncio.to_thread(again.wait) == 0, again.tail()
    assert again.leftovers() == []


def test_defaults_run_from_any_directory_with_a_relative_data_dir(tmp_path: Path):
    """`roomcast dev` as a user types it: no --data-dir, so `./.roomcast` under the current
    directory, which the SecantusDB child (running inside its data dir) must still find."""
    port = free_port()
    log = (tmp_path / "dev.log").open("wb")
    process = subprocess.Popen(
        dev_command("--port", str(port)),
        cwd=tmp_path,
        env=dev_env(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "dev.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not ready within 60 s"
            time.sleep(0.2)
        assert (tmp_path / ".roomcast" / "db").is_dir()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(30) == 0
        log.close()

"""A joiner's held events after its `msgHistory` (no gap, no repeat, in order): a chat message
held before the last message the history showed is older than that history, and must not be
written after it (tests/integration/test_cluster.py's no-gap check caught one, out of order).
Presence changes that the joiner's `activeUsers` snapshot already holds are not written either:
presence answers a batch of joins after their `userJoin`s (2.1)."""

from __future__ import annotations

from typing import Any, cast

import orjson

from roomcast.gateway.membership import Member


class Socket:
    def __init__(self) -> None:
        self.written: list[tuple[str, str]] = []

    def push(self, frame: str | bytes, event: str, size: int = 0) -> None:
        self.written.append((str(frame), event))


def member() -> tuple[Member, Socket]:
    socket = Socket()
    return Member(cast(Any, socket), "main"), socket


async def test_a_held_message_older_than_the_history_is_not_written_after_it() -> None:
    m, socket = member()
    m.deliver("m11", "updateChat", "m11", 3)  # held, then pushed out of the newest-N window
    m.deliver("join", "userJoin", None, 4)
    m.deliver("m12", "updateChat", "m12", 3)  # the history's oldest ... newest
    m.deliver("m36", "updateChat", "m36", 3)
    m.deliver("edit11", "editChat", "m11", 6)  # a change is never dropped for its age
    m.deliver("m37", "updateChat", "m37", 3)
    m.go_live({f"m{i}" for i in range(12, 37)})
    assert socket.written == [("join", "userJoin"), ("edit11", "editChat"), ("m37", "updateChat")]


async def test_without_history_everything_held_is_written_in_order() -> None:
    m, socket = member()
    for i in range(3):
        m.deliver(f"m{i}", "updateChat", f"m{i}", 2)
    m.go_live(set())
    assert [frame for frame, _ in socket.written] == ["m0", "m1", "m2"]
    m.deliver("m3", "updateChat", "m3", 2)  # live now: written at once
    assert socket.written[-1] == ("m3", "updateChat")


async def test_held_messages_newer_than_the_history_are_all_written() -> None:
    m, socket = member()
    m.deliver("m5", "updateChat", "m5", 2)
    m.deliver("m6", "updateChat", "m6", 2)
    m.go_live({"m1", "m2"})  # the history ended before anything held
    assert [frame for frame, _ in socket.written] == ["m5", "m6"]


def presence_frame(event: str, username: str) -> str:
    return orjson.dumps({"event": event, "data": {"username": username, "room": "main"}}).decode()


async def test_held_presence_changes_the_snapshot_holds_are_not_written() -> None:
    m, socket = member()
    held = [
        ("userJoin", "ann"),  # judged before the joiner in its batch: in the snapshot
        ("userJoin", "bob"),  # after it: news
        ("userLeave", "cat"),  # gone before the snapshot: not in it
        ("userLeave", "ann"),  # news
        ("userJoin", "ann"),  # news again: she was taken off the list just before
        ("userJoin", "bob"),  # already added above
    ]
    for event, username in held:
        m.deliver(presence_frame(event, username), event, None, 10)
    m.go_live(set(), ["ann", "joiner"])
    written = [(event, orjson.loads(frame)["data"]["username"]) for frame, event in socket.written]
    assert written == [("userJoin", "bob"), ("userLeave", "ann"), ("userJoin", "ann")]
    # what is written, replayed on the snapshot, gives what everything held would have given
    listed = {"ann", "joiner"}
    for event, username in held:
        listed = listed | {username} if event == "userJoin" else listed - {username}
    assert listed == {"ann", "bob", "joiner"}


async def test_a_presence_change_is_never_held_back_once_live() -> None:
    m, socket = member()
    m.go_live(set(), ["ann"])
    m.deliver(presence_frame("userJoin", "ann"), "userJoin", None, 10)  # live: not judged
    assert [event for _, event in socket.written] == ["userJoin"]

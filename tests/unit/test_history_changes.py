"""The history service's changes and reads with a reader (PROTOCOL.md 2.3), through the
in-memory bus and store: requests go where the gateway sends them (`history.<room>`, behind the
chat writes of `room.<room>.updateChat`), replies come back as `rpc.result`/`rpc.refusal`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from roomcast.history import changes
from roomcast.history.service import HistoryService
from roomcast.shared import rpc, topics
from roomcast.shared.bus import BusTimeoutError, InMemoryBus, Message, RejectMessage
from roomcast.shared.config import load_settings
from roomcast.shared.errors import ProtocolError
from roomcast.shared.models import ChatMessage, RevClock
from roomcast.shared.store.memory import InMemoryMessageStore
from roomcast.shared.topics import Header

pytestmark = pytest.mark.unit

ROOM = "lobby"
ANN, BOB = "hash-ann", "hash-bob"
TIMEOUT = 5.0


@dataclass
class History:
    bus: InMemoryBus
    store: InMemoryMessageStore

    async def post(self, n: int, username: str = "ann", author: str | None = ANN) -> None:
        """Publish a chat message as a gateway does (`Header.AUTHOR` = the session hash)."""
        message = ChatMessage(
            id=f"m{n:04d}", username=username, body=f"hello {n}", time=n, room=ROOM, rev=n
        )
        frame = {"event": "updateChat", "room": ROOM, "data": message.wire()}
        headers = {Header.MESSAGE_ID: message.id}
        if author is not None:
            headers[Header.AUTHOR] = author
        await self.bus.publish(
            topics.room_event(ROOM, "updateChat"),
            orjson.dumps(frame),
            headers=headers,
            persistent=True,
        )

    async def change(self, op: str, message_id: str, **fields: Any) -> Any:
        request = rpc.ChangeRequest.model_validate(
            {"op": op, "id": message_id, "author": ANN, "username": "ann", "rev": 0, "at": 77}
            | fields
        )
        return await rpc.call(self.bus, topics.history_request(ROOM), request, timeout=TIMEOUT)

    async def query(self, **fields: Any) -> rpc.HistoryReply:
        query = rpc.HistoryQuery.model_validate({"op": "recent", "limit": 50} | fields)
        result = await rpc.call(self.bus, topics.history_request(ROOM), query, timeout=TIMEOUT)
        return rpc.HistoryReply.model_validate(result)


@pytest.fixture
async def history() -> AsyncIterator[History]:
    bus = InMemoryBus(name="history-changes")
    await bus.connect()
    store = InMemoryMessageStore()
    service = HistoryService(bus, store, load_settings(secret="test-secret-0123456789abcdef"))
    await service.start()
    try:
        yield History(bus, store)
    finally:
        await service.stop()
        await bus.close()


async def refused(code: str, awaitable: Any) -> None:
    with pytest.raises(ProtocolError) as caught:
        await awaitable
    assert caught.value.code == code


async def test_an_edit_lands_after_the_writes_ahead_of_it(history: History) -> None:
    await history.post(1)
    await history.post(2)  # not waited for: the change queues behind it
    result = await history.change("edit", "m0002", body="fixed", rev=1)
    message = result["message"]
    assert (message["id"], message["body"], message["edited"]) == ("m0002", "fixed", 77)
    assert message["rev"] > 2  # the proposal (1) raised above the room's largest rev (2)
    assert "author" not in message
    stored = await history.store.get(ROOM, "m0002")
    assert stored is not None and stored.wire() == message


async def test_the_author_header_is_who_may_edit(history: History) -> None:
    await history.post(1, author=BOB, username="ann")  # "ann" of another session
    await refused("forbidden", history.change("edit", "m0001", body="mine now"))
    await history.post(2, author=None)  # no author known: the username decides
    result = await history.change("edit", "m0002", body="fine")
    assert result["message"]["body"] == "fine"


async def test_delete_react_and_their_refusals(history: History) -> None:
    await history.post(1, username="bob", author=BOB)
    await refused("forbidden", history.change("delete", "m0001"))
    reacted = await history.change("react", "m0001", emoji="👍", add=True)
    assert reacted["message"]["reactions"] == {"👍": ["ann"]}
    for i in range(19):
        await history.change("react", "m0001", emoji=f"e{i}", add=True)
    await refused("invalid", history.change("react", "m0001", emoji="one-too-many", add=True))
    await refused("invalid", history.change("react", "m0001", emoji="👍"))  # no `add`
    await refused("invalid", history.change("edit", "m0001"))  # no `body`
    gone = await history.change("delete", "m0001", moderator=True)
    assert gone["message"]["deleted"] is True and gone["message"]["body"] == ""
    assert "reactions" not in gone["message"]
    await refused("not_found", history.change("react", "m0001", emoji="👍", add=True))
    await refused("not_found", history.change("delete", "nope0000"))


async def test_mark_read_and_a_read_with_a_reader(history: History) -> None:
    for n in (1, 2):
        await history.post(n, username="bob", author=BOB)
    await history.post(3)  # ann's own: never unread for her
    await history.post(4, username="bob", author=BOB)

    before = await history.query(reader=ANN, username="ann")
    assert (before.last_read, before.unread) == (None, 3)
    assert await history.change("markRead", "m0002") == {"id": "m0002", "unread": 1}
    assert await history.change("markRead", "m0001") == {"id": "m0002", "unread": 1}  # not back
    await refused("not_found", history.change("markRead", "nope0000"))

    recent = await history.query(reader=ANN, username="ann")
    assert [m.id for m in recent.messages] == ["m0001", "m0002", "m0003", "m0004"]
    assert (recent.last_read, recent.unread) == ("m0002", 1)
    since = await history.query(op="since", since="m0003", reader=ANN, username="ann")
    assert since.recovered is True and (since.last_read, since.unread) == ("m0002", 1)
    plain = await history.query()
    assert (plain.last_read, plain.unread) == (None, None)
    looked_up = await history.query(op="lookup", id="m0001", limit=1, reader=ANN)
    assert looked_up.unread is None  # only recent, since and since_rev carry the read state


async def test_since_rev(history: History) -> None:
    for n in (1, 2, 3):
        await history.post(n)
    edit = await history.change("edit", "m0001", body="changed")
    changed = await history.query(op="since_rev", since_rev=2, limit=5, reader=BOB, username="bob")
    assert [(m.id, m.rev) for m in changed.messages] == [
        ("m0003", 3),
        ("m0001", edit["message"]["rev"]),
    ]
    assert changed.newest == "m0003"  # in rev order, the room's newest is not the last
    assert changed.recovered is True and (changed.last_read, changed.unread) == (None, 3)
    too_many = await history.query(op="since_rev", since_rev=0, limit=2)
    assert too_many.recovered is False
    assert [m.id for m in too_many.messages] == ["m0002", "m0003"]  # the newest, stored order


async def test_a_change_is_ordered_after_what_was_proposed_while_it_waited(
    history: History,
) -> None:
    """A gateway proposes a change's rev when it is asked; a message published while the change
    waits in the queue proposes a larger one, and its readers may have it before the change's
    event. The change still gets the larger rev, so recovering from the largest rev seen
    finds it."""
    await history.post(1)
    asked = RevClock().next()
    await asyncio.sleep(0.005)  # the clock moves on (no timing is asserted)
    meanwhile = RevClock().next()
    assert meanwhile > asked
    result = await history.change("edit", "m0001", body="late", rev=asked)
    assert result["message"]["rev"] > meanwhile
    frozen = await changes.apply(
        history.store,
        ROOM,
        rpc.ChangeRequest(
            op="react", id="m0001", author=ANN, username="ann", rev=5, at=1, emoji="x", add=True
        ),
        clock=lambda: 1.0,  # a clock far behind: the room's largest rev still comes first
    )
    assert frozen["message"]["rev"] == result["message"]["rev"] + 1


async def test_a_store_that_is_down_refuses_reads_and_changes(history: History) -> None:
    await history.post(1)
    await history.query()  # the write is in
    history.store.available = False
    await refused("unavailable", history.change("edit", "m0001", body="x"))
    await refused("unavailable", history.query(reader=ANN))
    history.store.available = True
    assert (await history.change("edit", "m0001", body="x"))["message"]["body"] == "x"


def test_a_history_request_is_a_query_or_a_change_by_its_op() -> None:
    def decoded(body: dict[str, Any]) -> rpc.HistoryQuery | rpc.ChangeRequest:
        return rpc.decode_history(Message("history.lobby", orjson.dumps(body)))

    assert isinstance(decoded({"op": "since_rev", "limit": 5, "since_rev": 9}), rpc.HistoryQuery)
    change = {"op": "markRead", "id": "m1", "author": "a", "username": "u", "rev": 1, "at": 2}
    assert isinstance(decoded(change), rpc.ChangeRequest)
    with pytest.raises(RejectMessage):
        decoded({"op": "shout", "limit": 5})
    with pytest.raises(RejectMessage):
        decoded({"op": "edit", "limit": 5})  # a change's op with a query's fields


async def test_a_request_whose_caller_gave_up_is_dropped_not_applied(history: History) -> None:
    """A late queue (a join storm) must not spend itself on reads nobody waits for, nor apply a
    change whose client was already told `unavailable`."""

    def dropped() -> float:
        value = REGISTRY.get_sample_value("roomcast_history_requests_expired_total", {"op": "edit"})
        return value or 0.0

    await history.post(1)
    before = dropped()
    late = rpc.ChangeRequest.model_validate(
        {"op": "edit", "id": "m0001", "author": ANN, "username": "ann", "rev": 0, "at": 77}
        | {"body": "too late"}
    )
    with pytest.raises(BusTimeoutError):  # a deadline already past: the caller gave up
        await rpc.call(
            history.bus, topics.history_request(ROOM), late, timeout=0.3, wall=lambda: 0.0
        )
    assert dropped() == before + 1
    reply = await history.query()
    assert [m.body for m in reply.messages] == ["hello 1"]  # the edit was not applied

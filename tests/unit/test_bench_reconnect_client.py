"""The reconnect-storm client's bookkeeping, fed frames by hand (no servers): where its next
`since` starts and what it counts as seen, missing or repeated."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from roomcast.bench.reconnectclient import StormClient

pytestmark = pytest.mark.unit

ROOM = "r1"


class FakeSocket:
    """Stands for the WebSocket: keeps what the client sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.is_open = True

    def send_text(self, text: str) -> bool:
        self.sent.append(orjson.loads(text))
        return True

    def close(self) -> None:
        self.is_open = False


def _frames(*frames: dict[str, Any]) -> str:
    return "\n".join(orjson.dumps(f).decode() for f in frames)


def _chat(message_id: str) -> dict[str, Any]:
    return {"event": "updateChat", "room": ROOM, "data": {"id": message_id}}


def _history(*ids: str) -> dict[str, Any]:
    return {"event": "msgHistory", "room": ROOM, "data": [{"id": i} for i in ids]}


def _ack(ref: str, **data: Any) -> dict[str, Any]:
    return {"event": "ack", "ref": ref, "data": {"session": "s1", "room": ROOM, **data}}


async def _join(client: StormClient, *frames: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Run one join: the server answers with `frames` (an ack frame's ref is filled in) in one
    batch; returns what the client sent and the join's ack data."""
    socket = client.ws
    assert isinstance(socket, FakeSocket)
    task = asyncio.create_task(client.join(since=True))
    await asyncio.sleep(0)
    sent = socket.sent[-1]
    answer = [{**f, "ref": sent["ref"]} if f["event"] in ("ack", "error") else f for f in frames]
    client.on_text(_frames(*answer), 0)
    return sent, await task


def _client() -> StormClient:
    client = StormClient(0, "u0", ROOM)
    client.ws = FakeSocket()  # type: ignore[assignment]
    return client


async def test_live_messages_of_a_join_without_history_do_not_move_since() -> None:
    client = _client()
    await _join(client, _history("m1", "m2"), _ack("x"))
    assert client.last_id == "m2"
    # the socket dropped; m3 and m4 were posted meanwhile; the join comes back without history
    sent, ack = await _join(
        client, _history(), _chat("m5"), _ack("x", history=False, recovered=False)
    )
    assert sent["data"]["since"] == "m2"
    assert ack["history"] is False
    client.on_text(_frames(_chat("m6")), 0)  # live after it, still no gapless view
    assert client.last_id == "m2"
    assert "m5" not in client.seen and "m6" not in client.seen

    # left and joined again: `since` is still where the gapless view ended
    sent, _ = await _join(
        client, _history("m3", "m4", "m5", "m6"), _chat("m7"), _ack("x", recovered=True)
    )
    assert sent["data"]["since"] == "m2"
    assert client.last_id == "m7"
    assert client.seen == {f"m{i}" for i in range(1, 8)}
    assert client.duplicates == 0  # m5 and m6 again are the recovery, not a repeat


async def test_a_recovered_join_that_repeats_a_message_counts_a_duplicate() -> None:
    client = _client()
    await _join(client, _history("m1", "m2"), _ack("x"))
    await _join(client, _history("m2", "m3"), _ack("x", recovered=True))
    assert client.duplicates == 1
    client.on_text(_frames(_chat("m3")), 0)  # live, after the join: a repeat too
    assert client.duplicates == 2
    assert client.last_id == "m3"


async def test_a_message_the_recovery_left_out_stays_missing() -> None:
    client = _client()
    await _join(client, _history("m1"), _ack("x"))
    await _join(client, _history(), _chat("m3"), _ack("x", history=False, recovered=False))
    sent, _ = await _join(client, _history("m3"), _ack("x", recovered=True))  # m2 left out
    assert sent["data"]["since"] == "m1"
    assert "m2" not in client.seen  # what the report counts as missing is the server's


async def test_held_events_of_a_refused_or_unrecovered_join_do_not_move_since() -> None:
    client = _client()
    await _join(client, _history("m1"), _ack("x"))
    with pytest.raises(Exception, match="unavailable"):
        await _join(client, {"event": "error", "data": {"code": "unavailable"}})
    assert client.last_id == "m1"
    await _join(client, _history("m8", "m9"), _ack("x", recovered=False))
    assert client.last_id == "m1"
    assert "m9" not in client.seen


async def test_a_dropped_socket_ends_the_gapless_view() -> None:
    client = _client()
    await _join(client, _history("m1"), _ack("x"))
    closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    closed.set_result(1006)
    client._closed(closed)
    client.on_text(_frames(_chat("m2")), 0)  # a late frame of the old socket
    assert client.last_id == "m1"

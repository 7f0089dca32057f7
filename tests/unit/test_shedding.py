"""Overload sheds (PROTOCOL.md 2.2, issue 11 item 5): a room event that reaches the gateway
older than the send queue's age bound is written to no socket; the room's sockets are closed
1013 and recover what they missed with `since`. Other rooms are not disturbed."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from roomcast.gateway.shedding import Shedder, age_of
from roomcast.shared import topics
from roomcast.shared.frames import encode_event
from roomcast.shared.topics import Header
from tests.unit.test_bad_input import closed_by_server, local_metric
from tests.unit.test_gap_repair import chat_ids, fence, is_chat, two_in

SHED = "roomcast_gateway_shed_total"


async def publish_chat(server, room: str, message_id: str, body: str, sent_at: float) -> None:
    data = {"id": message_id, "username": "ghost", "body": body, "time": 1, "room": room}
    await server.system.bus.publish(
        topics.room_event(room, "updateChat"),
        encode_event("updateChat", data, room=room).encode(),
        headers={
            Header.MESSAGE_ID: message_id,
            Header.PUBLICATION: f"pub-{message_id}",
            Header.SENT_AT: f"{sent_at:.6f}",
        },
        persistent=True,
    )


@pytest.mark.settings(send_queue_seconds=5)
async def test_a_stale_room_event_closes_the_rooms_sockets_1013_and_they_recover(connect, server):
    alice, bob = await two_in(connect, "busy")
    carol = await connect()
    await carol.join("carol", "quiet")
    dave = await connect()
    await dave.join("dave", "quiet")
    seen = await fence(alice, "busy", bob)
    before = local_metric(SHED)

    with capture_logs() as logs:
        await publish_chat(server, "busy", "stale-0001", "late", time.time() - 30)
        assert await closed_by_server(alice) == 1013
        assert await closed_by_server(bob) == 1013
    assert local_metric(SHED) == before + 1
    lines = [e for e in logs if e["event"].startswith("gateway behind")]
    assert len(lines) == 1, logs
    assert lines[0]["room"] == "busy" and lines[0]["sockets"] == 2
    assert lines[0]["age_seconds"] >= 29 and lines[0]["log_level"] == "warning"
    # nothing stale was written to either socket before the close
    assert "stale-0001" not in chat_ids(alice, "busy") + chat_ids(bob, "busy")

    # another room on the same gateway goes on as before
    await fence(carol, "quiet", dave)
    assert not carol.closed.done() and not dave.closed.done()

    # the closed client comes back with `since` and gets what it missed from history
    back = await connect()
    ack = await back.join("alice", "busy", session=alice.session, since=seen["id"])
    assert ack["recovered"] is True
    history = back.received("msgHistory", "busy")[-1]["data"]
    assert [m["id"] for m in history] == ["stale-0001"]


async def test_a_fresh_event_is_delivered_and_a_bad_stamp_is_not_shed(connect, server):
    alice, bob = await two_in(connect, "calm")
    before = local_metric(SHED)
    await publish_chat(server, "calm", "fresh-0001", "on time", time.time())
    await bob.wait_for(is_chat("on time"))
    await server.system.bus.publish(
        topics.room_event("calm", "updateChat"),
        encode_event(
            "updateChat",
            {"id": "odd-00001", "username": "ghost", "body": "odd", "time": 1, "room": "calm"},
            room="calm",
        ).encode(),
        headers={Header.MESSAGE_ID: "odd-00001", Header.PUBLICATION: "p", Header.SENT_AT: "x"},
    )
    await bob.wait_for(is_chat("odd"))
    await fence(alice, "calm", bob)
    assert local_metric(SHED) == before


def test_the_lag_is_past_the_bound_or_none() -> None:
    shedder = Shedder(10.0)

    def lag(sent: str | None) -> float | None:
        age = age_of(sent, wall=lambda: 1000.0)
        return age if age is not None and shedder.behind(age) else None

    assert lag(None) is None
    assert lag("not a time") is None
    assert lag("995.0") is None
    assert lag("990.0") is None  # exactly at the bound: not past it
    assert lag("985.5") == pytest.approx(14.5)

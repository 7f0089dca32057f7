"""The direct write of text frames to Hypercorn's socket (`rawsend.py`): the frames are what
wsproto would have sent, the path is taken for plain sockets, and a socket that negotiated
deflate still goes through Hypercorn (where its frames are compressed)."""

from __future__ import annotations

import pytest
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import TextMessage

from roomcast.gateway import rawsend
from tests.support.chat_client import ChatClient


@pytest.mark.parametrize("chars", [0, 1, 125, 126, 65535, 65536, 70_000])
def test_text_frame_is_what_wsproto_sends(chars: int) -> None:
    text = "é" * (chars // 2) + "x" * (chars % 2)
    expected = WSConnection(ConnectionType.SERVER).send(TextMessage(data=text))
    assert rawsend.text_frame(text.encode()) == expected


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = rawsend.text_frame

    def counted(payload: bytes) -> bytes:
        calls.append(len(payload))
        return original(payload)

    monkeypatch.setattr(rawsend, "text_frame", counted)
    return calls


async def test_room_events_are_written_directly(connect, monkeypatch) -> None:
    calls = _counting(monkeypatch)
    alice: ChatClient = await connect()
    bob: ChatClient = await connect(batch=True)
    await alice.join("alice")
    await bob.join("bob")
    for i in range(3):
        await alice.say("main", f"hello {i}")
    for i in range(3):
        await bob.wait_for(
            lambda f, i=i: f["event"] == "updateChat" and f["data"]["body"] == f"hello {i}"
        )
    assert [f["data"]["body"] for f in bob.received("updateChat", "main")] == [
        "hello 0",
        "hello 1",
        "hello 2",
    ]
    assert calls, "no frame took the direct path"


@pytest.mark.settings(websocket_compression=True)
async def test_a_deflate_socket_goes_through_hypercorn(connect, monkeypatch) -> None:
    calls = _counting(monkeypatch)
    alice: ChatClient = await connect()  # the websockets client offers deflate by default
    await alice.join("alice")
    await alice.say("main", "compressed")
    assert alice.ws.protocol.extensions, "deflate was not negotiated"
    assert calls == []

"""What Hypercorn keeps per connection, trimmed (roomcast.gateway.slimconn): events that allocate
nothing until awaited, and an upgraded socket that lets go of its HTTP/1.1 state and of its
handshake's headers. Hypercorn's internals this relies on are checked first (an upgrade fails
here, loudly)."""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

import h11
import pytest
from hypercorn.asyncio import worker_context
from hypercorn.protocol import h11 as hypercorn_h11
from hypercorn.protocol import ws_stream

from roomcast.gateway.rawsend import DirectSink
from roomcast.gateway.slimconn import LazyEvent, UpgradedError, forget_http
from roomcast.runtime import _hypercorn
from roomcast.shared.config import load_settings
from tests.support.chat_client import ChatClient

pytestmark = pytest.mark.unit


def test_hypercorn_keeps_what_slimconn_relies_on() -> None:
    """If this fails, re-read hypercorn/protocol/h11.py and asyncio/worker_context.py and adapt
    slimconn.py (or drop what Hypercorn now does itself)."""
    assert version("hypercorn") == "0.18.0", "pinned in pyproject.toml: re-check slimconn.py"
    assert "context.event_class()" in inspect.getsource(hypercorn_h11.H11Protocol.__init__)
    assert "event_class" in worker_context.WorkerContext.__annotations__
    # the h11 connection under an upgraded socket is used to send HTTP events only, and the
    # HTTP/1.1 protocol sends none once the stream is a WebSocket's: only the handshake's
    # response (or a refusal) and the 400/500 of a stream that never upgraded
    ws_connection = inspect.getsource(hypercorn_h11.H11WSConnection)
    assert ws_connection.count("self.h11_connection") == 2  # kept in __init__, used in send
    assert "return self.h11_connection.send(event)" in ws_connection
    send = inspect.getsource(hypercorn_h11.H11Protocol.stream_send)
    assert (
        "elif isinstance(event, Data):\n            await self.send(RawData(data=event.data))"
        in send
    )
    _hypercorn("127.0.0.1", 8000, load_settings())  # every server roomcast runs goes through it
    assert worker_context.WorkerContext.event_class is LazyEvent


async def test_a_lazy_event_wakes_every_waiter_and_can_be_cleared() -> None:
    event = LazyEvent()
    assert not event.is_set()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    await event.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert event.is_set()
    await event.wait()  # set: returns at once
    await event.clear()
    again = asyncio.create_task(event.wait())
    await asyncio.sleep(0.01)
    assert not again.done()
    again.cancel()  # a cancelled waiter leaves nothing behind
    with pytest.raises(asyncio.CancelledError):
        await again
    assert not event._waiters
    await event.set()


def test_an_upgraded_connection_refuses_to_send_http() -> None:
    class Stream:
        pass

    protocol = hypercorn_h11.H11Protocol.__new__(hypercorn_h11.H11Protocol)
    protocol.connection = hypercorn_h11.H11WSConnection(h11.Connection(h11.SERVER))
    stream = Stream()
    stream.send = protocol.stream_send  # type: ignore[attr-defined]
    assert forget_http(stream)
    with pytest.raises(UpgradedError):
        protocol.connection.send(h11.EndOfMessage())
    assert not forget_http(Stream())  # not Hypercorn's HTTP/1.1: nothing to let go


async def test_an_accepted_socket_keeps_no_http_state_and_still_works(connect, server) -> None:
    alice: ChatClient = await connect()
    await alice.join("alice")
    bob: ChatClient = await connect()
    await bob.join("bob")
    streams = []
    for conn in server.system.gateway.membership.connections:
        sink = conn._sink
        assert isinstance(sink, DirectSink)
        streams.append(sink._stream)
    assert len(streams) == 2
    for stream in streams:
        assert isinstance(stream, ws_stream.WSStream)
        protocol = stream.send.__self__
        assert isinstance(protocol.connection, hypercorn_h11.H11WSConnection)
        assert not isinstance(protocol.connection.h11_connection, h11.Connection)
        assert isinstance(protocol.can_read, LazyEvent) and protocol.can_read._waiters is None
        assert not stream.scope["headers"]
    await alice.say("main", "after the upgrade")
    said = await bob.wait_for(lambda f: f["event"] == "updateChat")
    assert said["data"]["body"] == "after the upgrade"
    await alice.close()
    await bob.wait_for(lambda f: f["event"] == "userLeave")

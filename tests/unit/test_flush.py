"""The flush policy of a socket's send queue (`connection.py`): what queues in one loop
iteration is written at its end, coalesced into one frame for `batch=1` and one frame per event
otherwise; under back-pressure events wait (coalesced) until the transport drains; nothing is
lost or reordered, the byte bound still closes with 1013, and a socket closed mid-flush writes
nothing more."""

from __future__ import annotations

import asyncio
from dataclasses import fields

from roomcast.gateway.connection import CLOSE_TRY_LATER, Connection, Limiters
from roomcast.gateway.ratelimit import TokenBucket
from roomcast.gateway.rawsend import Sink


class FakeSink(Sink):
    """A transport that records each write and can be held above its high-water mark."""

    __slots__ = ("drained", "held", "writes")

    def __init__(self) -> None:
        super().__init__(self._never)
        self.writes: list[list[bytes]] = []  # the frames (as payloads) of each write call
        self.held = False
        self.drained = asyncio.Event()

    async def _never(self, _: str | bytes) -> None:
        raise AssertionError("the direct path was not taken")

    def write(self, payloads: list[bytes], batch: bool) -> bool:
        frames = [b"\n".join(payloads)] if batch else list(payloads)
        self.writes.append(frames)
        return True

    def blocked(self) -> bool:
        return self.held

    async def drain(self) -> None:
        await self.drained.wait()

    def release(self) -> None:
        self.held = False
        self.drained.set()


class AsgiOnly(Sink):
    """A socket that can only be written through the server's awaited send."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        super().__init__(self._send)

    async def _send(self, text: str | bytes) -> None:
        await asyncio.sleep(0)
        self.sent.append(text)


async def _closed(_: int) -> None:
    return None


def _conn(sink: Sink, *, batch: bool, queue_bytes: int = 1 << 20) -> Connection:
    return Connection(
        sink,
        _closed,
        batch=batch,
        queue_bytes=queue_bytes,
        queue_seconds=10,
        limiters=Limiters(*(TokenBucket(1, 1) for _ in fields(Limiters))),
    )


async def _next_iteration() -> None:
    await asyncio.sleep(0)


def _lines(sink: FakeSink) -> list[bytes]:
    return [line for write in sink.writes for frame in write for line in frame.split(b"\n")]


async def test_events_pushed_in_one_iteration_reach_a_batch_socket_as_one_frame() -> None:
    sink = FakeSink()
    conn = _conn(sink, batch=True)
    for i in range(3):
        conn.push(f'{{"n":{i}}}'.encode(), "updateChat")
    assert sink.writes == [], "written before the iteration ended"
    await _next_iteration()
    assert sink.writes == [[b'{"n":0}\n{"n":1}\n{"n":2}']]


async def test_without_batch_each_event_is_its_own_frame_in_one_write() -> None:
    sink = FakeSink()
    conn = _conn(sink, batch=False)
    for i in range(3):
        conn.push(f"e{i}", "updateChat")
    await _next_iteration()
    assert sink.writes == [[b"e0", b"e1", b"e2"]]


async def test_an_event_alone_is_written_at_the_end_of_its_iteration() -> None:
    sink = FakeSink()
    conn = _conn(sink, batch=True)
    conn.push(b"one", "updateChat")
    await _next_iteration()
    conn.push(b"two", "updateChat")
    await _next_iteration()
    assert sink.writes == [[b"one"], [b"two"]]


async def test_a_back_pressured_socket_coalesces_until_it_drains_in_order() -> None:
    sink = FakeSink()
    conn = _conn(sink, batch=True)
    sink.held = True
    conn.push(b"0", "updateChat")
    await _next_iteration()
    for i in range(1, 6):  # over several iterations, while the transport is full
        conn.push(str(i).encode(), "updateChat")
        await _next_iteration()
    assert sink.writes == [[b"0"]]
    sink.release()
    for _ in range(3):
        await _next_iteration()
    assert sink.writes == [[b"0"], [b"1\n2\n3\n4\n5"]]
    conn.push(b"6", "updateChat")
    await _next_iteration()
    assert _lines(sink) == [str(i).encode() for i in range(7)]


async def test_a_back_pressured_plain_socket_keeps_one_event_per_frame() -> None:
    sink = FakeSink()
    conn = _conn(sink, batch=False)
    sink.held = True
    conn.push(b"a", "updateChat")
    await _next_iteration()
    conn.push(b"b", "updateChat")
    conn.push(b"c", "updateChat")
    sink.release()
    for _ in range(3):
        await _next_iteration()
    assert sink.writes == [[b"a"], [b"b", b"c"]]


async def test_the_byte_bound_still_closes_a_back_pressured_socket_1013() -> None:
    sink = FakeSink()
    conn = _conn(sink, batch=True, queue_bytes=64 * 1024)
    sink.held = True
    conn.push(b"x", "updateChat")
    await _next_iteration()
    for _ in range(40):
        conn.push(b"y" * 2048, "updateChat")
    assert conn.is_closing
    sink.release()
    for _ in range(3):
        await _next_iteration()
    assert sink.writes == [[b"x"]], "a socket closed for lagging was still written to"
    closes = []

    async def close(code: int) -> None:
        closes.append(code)

    conn._close = close

    async def gone() -> str:
        raise ConnectionError

    async def ignore(_: Connection, __: object) -> None:
        return None

    await conn.serve(gone, ignore, 1 << 16)
    assert closes == [CLOSE_TRY_LATER]


async def test_a_socket_closed_mid_flush_writes_nothing_more() -> None:
    sink = FakeSink()
    conn = _conn(sink, batch=True)
    conn.push(b"queued", "updateChat")
    conn.close_soon(1012)  # before the flush at the end of this iteration
    conn.push(b"after", "updateChat")
    await _next_iteration()
    assert sink.writes == []


async def test_a_socket_closed_while_waiting_for_a_drain_stops_its_task() -> None:
    sink = FakeSink()
    conn = _conn(sink, batch=True)
    sink.held = True
    conn.push(b"0", "updateChat")
    await _next_iteration()
    flusher = conn._flusher
    assert flusher is not None
    conn.push(b"1", "updateChat")
    conn.close_soon(1012)
    await asyncio.wait([flusher])
    assert flusher.cancelled() and sink.writes == [[b"0"]]


async def test_the_server_send_path_keeps_order_and_batches() -> None:
    sink = AsgiOnly()
    conn = _conn(sink, batch=True)
    for i in range(3):
        conn.push(f"{i}", "updateChat")
    await _next_iteration()
    conn.push("3", "updateChat")  # while the send task is starting
    flusher = conn._flusher
    assert flusher is not None
    await flusher
    assert b"\n".join(bytes(t) for t in sink.sent).split(b"\n") == [b"0", b"1", b"2", b"3"]
    assert len(sink.sent) < 4


async def test_finish_closes_after_its_last_event_is_written() -> None:
    sink = FakeSink()
    conn = _conn(sink, batch=False)
    conn.push(b"before", "updateChat")
    conn.finish("last", "error", 4001)
    assert not conn.is_closing
    await _next_iteration()
    assert sink.writes == [[b"before", b"last"]] and conn.is_closing

"""Flush pacing (`flushing.py`): while the gateway is busy, the events of several loop turns share
one write per socket (one frame with `batch=1`); while it is idle, or after a quiet interval,
an event is written at the end of its turn; one pass writes every socket; the send queue's
bounds and order hold while paced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from roomcast.gateway.connection import Connection, Limiters
from roomcast.gateway.flushing import Demand, FlushScheduler, scheduler
from roomcast.gateway.gateway import ChatGateway
from roomcast.gateway.ratelimit import TokenBucket
from roomcast.gateway.rawsend import Sink
from roomcast.shared.bus import InMemoryBus
from roomcast.shared.config import ConfigError, load_settings
from roomcast.shared.sessions import SessionSigner

INTERVAL = 0.3  # long, so that a slow test machine's turns still fall within one
WINDOW = 0.01


class FakeSink(Sink):
    """Records the frames of each write call."""

    __slots__ = ("writes",)

    def __init__(self) -> None:
        super().__init__(self._never)
        self.writes: list[list[bytes]] = []

    async def _never(self, _: str | bytes) -> None:
        raise AssertionError("the direct path was not taken")

    def write(self, payloads: list[bytes], batch: bool) -> bool:
        self.writes.append([b"\n".join(payloads)] if batch else list(payloads))
        return True


class Lagging(FakeSink):
    """A transport above its high-water mark after the first write, never drained."""

    __slots__ = ()

    def blocked(self) -> bool:
        return bool(self.writes)

    async def drain(self) -> None:
        await asyncio.Event().wait()


class Cpu:
    """A demand clock (`flushing.Demand`) that runs at `share` of the loop's clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop, share: float) -> None:
        self._loop = loop
        self.share = share
        self._at = loop.time()
        self._used = 0.0

    def __call__(self) -> float:
        now = self._loop.time()
        self._used += (now - self._at) * self.share
        self._at = now
        return self._used


async def _closed(_: int) -> None:
    return None


def _scheduler(share: float) -> tuple[FlushScheduler, Cpu]:
    loop = asyncio.get_running_loop()
    cpu = Cpu(loop, share)
    return FlushScheduler(loop, interval=INTERVAL, window=WINDOW, demand=cpu), cpu


def _conn(
    sink: Sink, flushes: FlushScheduler, *, batch: bool = True, **bounds: float
) -> Connection:
    return Connection(
        sink,
        _closed,
        batch=batch,
        queue_bytes=int(bounds.get("queue_bytes", 1 << 20)),
        queue_seconds=bounds.get("queue_seconds", 10.0),
        limiters=Limiters(*(TokenBucket(1, 1) for _ in fields(Limiters))),
        flushes=flushes,
    )


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _until(check: Callable[[], bool], limit: float = 1.0) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110 - a fake socket's writes have no event
            await asyncio.sleep(0.001)


async def _warm(flushes: FlushScheduler, sink: FakeSink) -> Connection:
    """A first event after a window has passed: the scheduler measures and decides its mode."""
    await asyncio.sleep(WINDOW * 2)
    conn = _conn(sink, flushes)
    conn.push(b"first", "updateChat")
    await _turns()
    return conn


async def test_a_busy_gateway_writes_several_turns_of_events_in_one_frame() -> None:
    flushes, _ = _scheduler(share=0.9)
    sink = FakeSink()
    conn = await _warm(flushes, sink)
    assert flushes.busy and sink.writes == [[b"first"]], "after a quiet interval: at once"
    for i in range(3):  # three loop turns, well within the interval
        conn.push(f"e{i}".encode(), "updateChat")
        await _turns()
    assert sink.writes == [[b"first"]], "written before the interval ended"
    await _until(lambda: len(sink.writes) == 2, INTERVAL * 3)
    assert sink.writes[1] == [b"e0\ne1\ne2"]


async def test_an_idle_gateway_writes_each_turn_at_its_end() -> None:
    flushes, _ = _scheduler(share=0.05)
    sink = FakeSink()
    conn = await _warm(flushes, sink)
    for i in range(3):
        conn.push(f"e{i}".encode(), "updateChat")
        await _turns()
        assert sink.writes[-1] == [f"e{i}".encode()], "an idle gateway made an event wait"
    assert not flushes.busy


async def test_pacing_stops_when_the_gateway_is_idle_again() -> None:
    flushes, cpu = _scheduler(share=0.9)
    sink = FakeSink()
    conn = await _warm(flushes, sink)
    assert flushes.busy
    cpu.share = 0.3  # above half the busy share: still paced (no flapping at the line)
    await asyncio.sleep(INTERVAL + WINDOW)
    conn.push(b"a", "updateChat")
    await _turns()
    conn.push(b"b", "updateChat")
    await _turns()
    assert flushes.busy and sink.writes[-1] == [b"a"]
    await _until(lambda: sink.writes[-1] == [b"b"], INTERVAL * 3)
    cpu.share = 0.1
    await asyncio.sleep(INTERVAL + WINDOW)
    conn.push(b"c", "updateChat")
    await _turns()
    conn.push(b"d", "updateChat")
    await _turns()
    assert not flushes.busy and sink.writes[-2:] == [[b"c"], [b"d"]]


async def test_plain_sockets_keep_one_event_per_frame_while_paced() -> None:
    flushes, _ = _scheduler(share=0.9)
    sink = FakeSink()
    await _warm(flushes, sink)
    conn = _conn(sink, flushes, batch=False)
    for i in range(3):
        conn.push(f"e{i}".encode(), "updateChat")
        await _turns()
    await _until(lambda: len(sink.writes) == 2, INTERVAL * 3)
    assert sink.writes[1] == [b"e0", b"e1", b"e2"]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_one_pass_writes_every_socket_of_a_room_event() -> None:
    flushes, _ = _scheduler(share=0.05)
    sinks = [FakeSink() for _ in range(50)]
    conns = [_conn(sink, flushes) for sink in sinks]
    passes = _sample("roomcast_gateway_flushes_total", mode="turn")
    written = _sample("roomcast_gateway_flushed_sockets_total")
    for conn in conns:
        conn.push(b"event", "updateChat")
    await _turns()
    assert all(sink.writes == [[b"event"]] for sink in sinks)
    assert _sample("roomcast_gateway_flushes_total", mode="turn") - passes == 1
    assert _sample("roomcast_gateway_flushed_sockets_total") - written == 50


async def test_the_bounds_still_close_a_lagging_socket_1013_while_paced() -> None:
    flushes, _ = _scheduler(share=0.9)
    sink = FakeSink()
    await _warm(flushes, sink)
    lagging = Lagging()
    by_bytes = _conn(lagging, flushes, queue_bytes=4096)
    by_age = _conn(lagging, flushes, queue_seconds=INTERVAL / 5)
    for _ in range(5):  # written once halfway to the bound; then the transport stays full
        by_bytes.push(b"y" * 2048, "updateChat")
    by_age.push(b"a", "updateChat")
    await asyncio.sleep(INTERVAL / 8)  # past half the age bound: written, then full
    by_age.push(b"b", "updateChat")
    by_age.push(b"c", "updateChat")  # waits behind the full transport
    await asyncio.sleep(INTERVAL / 4)
    by_age.push(b"d", "updateChat")
    assert by_bytes.is_closing and by_age.is_closing
    written = len(lagging.writes)
    await asyncio.sleep(INTERVAL * 1.5)
    assert len(lagging.writes) == written, "a socket closed for lagging was written to"


async def test_a_failing_socket_does_not_keep_the_others_unwritten() -> None:
    class Broken(FakeSink):
        def write(self, payloads: list[bytes], batch: bool) -> bool:
            raise RuntimeError("broken transport")

    flushes, _ = _scheduler(share=0.05)
    good = FakeSink()
    _conn(Broken(), flushes).push(b"a", "updateChat")
    _conn(good, flushes).push(b"a", "updateChat")
    await _turns()
    assert good.writes == [[b"a"]]


@pytest.mark.parametrize(
    ("value", "says"),
    [("fast", "valid number"), ("-1", "greater than or equal to 0"), ("51", "less than or equal")],
)
def test_a_bad_pace_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    monkeypatch.setenv("ROOMCAST_FLUSH_PACE_MS", value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value).startswith("ROOMCAST_FLUSH_PACE_MS: ") and says in str(error.value)


async def _no_close(code: int) -> None:
    raise AssertionError(f"closed {code}")


async def test_the_gateway_paces_its_sockets_by_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The setting reaches the loop's scheduler that every socket of the gateway flushes through."""
    monkeypatch.setenv("ROOMCAST_FLUSH_PACE_MS", "2.5")
    settings = load_settings()
    assert settings.flush_pace_ms == 2.5
    gateway = ChatGateway(InMemoryBus(), settings, SessionSigner(b"k" * 32))
    gateway.open(FakeSink(), _no_close, batch=True)  # the loop's first socket makes its scheduler
    assert scheduler().interval == 0.0025


async def test_a_pace_of_zero_never_makes_an_event_wait() -> None:
    loop = asyncio.get_running_loop()
    flushes = FlushScheduler(loop, interval=0.0, window=WINDOW, demand=Cpu(loop, 0.9))
    sink = FakeSink()
    conn = await _warm(flushes, sink)
    conn.push(b"a", "updateChat")
    await _turns()
    assert flushes.busy and sink.writes == [[b"first"], [b"a"]]


def test_demand_counts_at_least_the_threads_cpu_time() -> None:
    demand = Demand()
    before, cpu_before = demand(), time.thread_time()
    total = 0
    while time.thread_time() - cpu_before < 0.05:
        total += 1
    assert demand() - before >= (time.thread_time() - cpu_before) * 0.9


def test_demand_without_schedstat_is_the_threads_cpu_time(tmp_path: Path) -> None:
    demand = Demand(str(tmp_path / "missing"))
    assert abs(demand() - time.thread_time()) < 0.01


async def test_a_paced_socket_halfway_to_a_bound_is_written_at_once_not_closed() -> None:
    flushes, _ = _scheduler(share=0.9)
    sink = FakeSink()
    await _warm(flushes, sink)
    by_bytes = _conn(sink, flushes, queue_bytes=8192)
    by_age = _conn(sink, flushes, queue_seconds=INTERVAL / 5)
    for _ in range(3):  # 6 KB within one interval: past half the byte bound, never past it
        by_bytes.push(b"y" * 2048, "updateChat")
        await _turns()
    by_age.push(b"a", "updateChat")
    await asyncio.sleep(INTERVAL / 8)  # past half the age bound, before the paced pass
    by_age.push(b"b", "updateChat")
    assert not by_bytes.is_closing and not by_age.is_closing
    assert [b"y" * 2048] * 2 in [w[0].split(b"\n") for w in sink.writes]
    assert [b"a\nb"] in sink.writes

"""The broker socket is written once per loop turn (shared/bus/rabbit/corking.py): what aiormq
writes in one turn leaves in one `write()`, in order, at the start of the next turn; a drain,
an end of file or a close sends what is pending first; a closing transport gets nothing."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from roomcast.shared.bus.rabbit.corking import CorkedWriter

pytestmark = pytest.mark.unit


class Transport(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.eof = False
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


def writer() -> tuple[CorkedWriter, Transport]:
    loop = asyncio.get_running_loop()
    transport = Transport()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    return CorkedWriter(transport, protocol, reader, loop), transport


async def test_the_writes_of_one_turn_leave_in_one_write_at_the_next() -> None:
    corked, transport = writer()
    corked.write(b"a")
    corked.write(bytearray(b"b"))
    corked.writelines([b"c", memoryview(b"d")])
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"abcd"]
    corked.write(b"e")
    await asyncio.sleep(0)
    assert transport.writes == [b"abcd", b"e"]
    corked.close()


async def test_drain_eof_and_close_send_what_is_pending_first() -> None:
    corked, transport = writer()
    corked.write(b"x")
    await corked.drain()
    assert transport.writes == [b"x"]
    corked.write(b"y")
    corked.write_eof()
    assert transport.writes == [b"x", b"y"] and transport.eof
    corked.write(b"z")
    corked.close()
    assert transport.writes == [b"x", b"y", b"z"] and transport.closing
    await asyncio.sleep(0)  # the scheduled uncork finds nothing left
    assert transport.writes == [b"x", b"y", b"z"]


async def test_a_closing_transport_is_not_written() -> None:
    corked, transport = writer()
    corked.write(b"late")
    transport.closing = True
    await asyncio.sleep(0)
    assert transport.writes == []
    corked.close()


async def test_a_failed_write_is_logged_and_what_follows_still_goes() -> None:
    corked, transport = writer()
    fail = [OSError("broken pipe")]

    def flaky(data: bytes | bytearray | memoryview) -> None:
        if fail:
            raise fail.pop()
        transport.writes.append(bytes(data))

    transport.write = flaky  # type: ignore[method-assign]
    with capture_logs() as logs:
        corked.write(b"lost")
        await asyncio.sleep(0)
        corked.write(b"next")
        await asyncio.sleep(0)
    [line] = [e for e in logs if e["event"] == "broker socket write failed"]
    assert "broken pipe" in line["error"]
    assert transport.writes == [b"next"]
    corked.close()

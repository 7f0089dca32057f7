"""The broker socket, written once per event-loop turn.

Why: aiormq writes each frame it sends (a publish: method, header and body) with its own
`write()`, and on uvloop each of those is a `send()` system call. A presence batch of joins, a
gateway's read-state and join batches, history's grouped acks: a turn that sends 20 frames paid
20 system calls, and in the join storm `send()` on the broker socket was 31 % of presence's CPU
(docs/performance.md, "Issue 11, third pass"). Here the frames of one turn are joined and sent in
one `write()` at the start of the next turn, before the loop polls again: nothing waits longer
than the turn it was written in, and `drain()`, `write_eof()` and `close()` send what is pending
first, so aiormq's order and its flow control are kept.

It plugs in where aiormq allows it (its `TransportFactory`); aio-pika is given a connection class
that hands the factory on to aiormq.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aio_pika import RobustConnection
from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

log = structlog.get_logger(__name__)

STREAM_LIMIT = 2**16  # asyncio.open_connection's default reader buffer


class CorkedWriter(asyncio.StreamWriter):
    """A `StreamWriter` whose writes of one loop turn leave in one system call."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._corked: list[bytes] = []
        self._loop_ = loop

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._corked:
            self._loop_.call_soon(self.uncork)
        self._corked.append(bytes(data))

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def uncork(self) -> None:
        """Send what this turn wrote (scheduled by the turn's first write)."""
        if not self._corked:
            return
        corked, self._corked = self._corked, []
        if self.transport.is_closing():
            return  # as a plain write to a closing transport: nothing is sent
        try:
            super().write(corked[0] if len(corked) == 1 else b"".join(corked))
        except Exception as exc:  # the reader sees the broken socket and aiormq reconnects
            log.warning("broker socket write failed", error=f"{type(exc).__name__}: {exc}")

    async def drain(self) -> None:
        self.uncork()
        await super().drain()

    def write_eof(self) -> None:
        self.uncork()
        super().write_eof()

    def close(self) -> None:
        self.uncork()
        super().close()


class CorkedTransportFactory(TransportFactory):
    """aiormq's TCP and TLS transports, with a `CorkedWriter`."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider else None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, url.host or "localhost", url.port or 5672, ssl=ssl, **kwargs
            )
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        return reader, CorkedWriter(transport, protocol, reader, loop)


class CorkedRobustConnection(RobustConnection):
    """aio-pika's robust connection on a `CorkedTransportFactory`: aio-pika hands the
    connection's keyword arguments to aiormq on every (re)connect."""

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any):
        super().__init__(url, loop, **kwargs)
        self.kwargs["transport_factory"] = CorkedTransportFactory()

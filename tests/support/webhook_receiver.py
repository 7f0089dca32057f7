"""A webhook receiver on 127.0.0.1 for the tests: a bare HTTP/1.1 server (one request per
connection) that answers each POST with the next status of a script (then 200), records what
arrived, and can be stopped and started again on the same port (a receiver that is down)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson

from roomcast.webhooks import signing

from .ports import free_port


@dataclass(frozen=True)
class Post:
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int  # what it was answered

    @property
    def events(self) -> list[dict[str, object]]:
        events: list[dict[str, object]] = orjson.loads(self.body)["events"]
        return events


@dataclass
class WebhookReceiver:
    secret: str
    port: int = field(default_factory=free_port)
    posts: list[Post] = field(default_factory=list)
    script: deque[int] = field(default_factory=deque)
    _server: asyncio.Server | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def answer(self, statuses: Iterable[int]) -> None:
        """Answer the next POSTs with these statuses, then 200 again."""
        self.script.extend(statuses)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def delivered(self) -> list[Post]:
        """POSTs answered 2xx."""
        return [p for p in self.posts if 200 <= p.status < 300]

    def event_ids(self) -> set[str]:
        return {str(e["id"]) for p in self.delivered() for e in p.events}

    def events(self) -> list[dict[str, object]]:
        return [e for p in self.delivered() for e in p.events]

    async def wait_for(
        self, predicate: Callable[[WebhookReceiver], bool], timeout: float = 20.0
    ) -> None:
        """Until `predicate(self)` holds; fails after `timeout` (a bound, not a measurement)."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: predicate(self))

    def verified(self) -> bool:
        """Every POST carries a valid signature of its own body."""
        for post in self.posts:
            signing.verify(post.headers.get(signing.HEADER.lower()), post.body, self.secret)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = self.script.popleft() if self.script else 200
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            async with self._arrived:
                self.posts.append(Post(headers, body, status))
                self._arrived.notify_all()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

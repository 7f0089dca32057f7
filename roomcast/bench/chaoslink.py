"""One WebSocket to a gateway for the chaos bench: frames split (`?batch=1` sends several per
frame), each `ack`/`error` matched to the request that carries its `ref`, everything else handed
to a callback. When the socket goes, every request still waiting fails with `LinkClosedError`,
so a caller never waits on a dead socket for its timeout.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from .wsclient import HandshakeError, WSClient, connect

Frame = dict[str, Any]
EventHandler = Callable[[Frame], None]

CONNECT_ERRORS = (OSError, TimeoutError, HandshakeError, ConnectionError)


class LinkClosedError(ConnectionError):
    """The socket closed before the answer came."""


class Link:
    """An open socket to `url` (`ws://host:port`)."""

    def __init__(self, url: str, on_event: EventHandler) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.url = url
        self.host, self.port = parts.hostname, parts.port
        self.on_event = on_event
        self._ws: WSClient | None = None
        self._waiting: dict[str, asyncio.Future[Frame]] = {}
        self._refs = itertools.count(1)

    @classmethod
    async def open(cls, url: str, on_event: EventHandler, *, timeout: float = 3.0) -> Link:
        link = cls(url, on_event)
        ws = await connect(f"{url}/ws?batch=1", link._on_text, timeout=timeout)
        link._ws = ws
        ws.closed.add_done_callback(link._fail_waiting)
        return link

    @property
    def closed(self) -> asyncio.Future[int | None]:
        assert self._ws is not None
        return self._ws.closed

    @property
    def is_open(self) -> bool:
        return self._ws is not None and self._ws.is_open and not self._ws.closed.done()

    def _on_text(self, text: str, _now_ns: int) -> None:
        for line in text.split("\n"):
            frame: Frame = orjson.loads(line)
            ref = frame.get("ref")
            if ref is not None and frame.get("event") in ("ack", "error"):
                future = self._waiting.pop(ref, None)
                if future is not None and not future.done():
                    future.set_result(frame)
                continue
            self.on_event(frame)

    def _fail_waiting(self, _closed: object) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(LinkClosedError("socket closed"))

    def send(self, event: str, data: Any, ref: str | None = None) -> bool:
        frame: Frame = {"event": event, "data": data}
        if ref is not None:
            frame["ref"] = ref
        return self._ws is not None and self._ws.send_text(orjson.dumps(frame).decode())

    async def request(self, event: str, data: Any, *, timeout: float) -> Frame:
        """The `ack` or `error` frame that answers; `TimeoutError` or `LinkClosedError`."""
        ref = f"r{next(self._refs)}"
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = future
        if not self.is_open or not self.send(event, data, ref):
            self._waiting.pop(ref, None)
            raise LinkClosedError("socket closed")
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(ref, None)

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()

    def abort(self) -> None:
        if self._ws is not None:
            self._ws.abort()

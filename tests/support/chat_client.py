"""A protocol client for tests: a real WebSocket (the `websockets` library), frames parsed and
kept in arrival order, and helpers that wait with a bound instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

Frame = dict[str, Any]


class RefusedError(Exception):
    def __init__(self, frame: Frame) -> None:
        super().__init__(f"{frame['data']['code']}: {frame['data']['message']}")
        self.code: str = frame["data"]["code"]
        self.frame = frame


class ChatClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self._taken = 0
        self._changed = asyncio.Condition()
        self._refs = itertools.count(1)
        self.username: str | None = None
        self.session: str | None = None
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        # room -> the user list as PROTOCOL.md 2.1 has a client keep it: the `activeUsers`
        # snapshot, then each later `userJoin`/`userLeave` of the room, in order
        self.lists: dict[str, list[str]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, base_url: str, *, batch: bool = False, **kwargs: Any) -> ChatClient:
        url = base_url.rstrip("/") + ("/ws?batch=1" if batch else "/ws")
        ws = await websockets.connect(url, open_timeout=10, max_size=2**24, **kwargs)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                assert isinstance(raw, str), "the server sent a binary frame"
                for line in raw.split("\n"):
                    frame = json.loads(line)
                    self.frames.append(frame)
                    self._keep_list(frame)
                async with self._changed:
                    self._changed.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            code = self.ws.close_code
            if not self.closed.done():
                self.closed.set_result(code)
            async with self._changed:
                self._changed.notify_all()

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    # sending ------------------------------------------------------------------------------
    async def send(self, event: str, data: Any, ref: str | None = None) -> None:
        frame: Frame = {"event": event, "data": data}
        if ref is not None:
            frame["ref"] = ref
        await self.ws.send(json.dumps(frame))

    async def send_raw(self, raw: str | bytes) -> None:
        await self.ws.send(raw)

    async def request(self, event: str, data: Any, *, timeout: float = 10) -> Any:
        """Send with a ref; return the ack's data or raise `RefusedError`."""
        ref = f"r{next(self._refs)}"
        await self.send(event, data, ref)
        reply = await self.wait_for(
            lambda f: f.get("ref") == ref and f["event"] in ("ack", "error"), timeout=timeout
        )
        if reply["event"] == "error":
            raise RefusedError(reply)
        return reply["data"]

    async def burst(self, event: str, data: Callable[[int], Any], count: int) -> list[Frame]:
        """Send `count` frames as fast as possible, then return their answers in order."""
        for i in range(count):
            await self.send(event, data(i), f"burst{i}")
        return [
            await self.wait_for(lambda f, r=f"burst{i}": f.get("ref") == r) for i in range(count)
        ]

    async def join(self, username: str, room: str = "main", **extra: Any) -> Any:
        ack = await self.request("userJoin", {"username": username, "room": room, **extra})
        self.username, self.session = username, ack["session"]
        return ack

    async def say(self, room: str, body: str, **extra: Any) -> Any:
        assert self.username is not None
        data = {"username": self.username, "body": body, "time": 0, "room": room, **extra}
        return await self.request("updateChat", data)

    # receiving ----------------------------------------------------------------------------
    async def wait_for(self, match: Callable[[Frame], bool], *, timeout: float = 10) -> Frame:
        """The first frame not yet taken that matches; frames before it stay available."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                while True:
                    for i in range(self._taken, len(self.frames)):
                        frame = self.frames[i]
                        if frame.get("_taken") is None and match(frame):
                            frame["_taken"] = True
                            return frame
                    if self.closed.done():
                        raise ConnectionError(f"socket closed ({self.closed.result()})")
                    await self._changed.wait()

    async def event(self, event: str, room: str | None = None, *, timeout: float = 10) -> Frame:
        return await self.wait_for(
            lambda f: f["event"] == event and (room is None or f.get("room") == room),
            timeout=timeout,
        )

    def _keep_list(self, frame: Frame) -> None:
        room, event, data = frame.get("room"), frame["event"], frame.get("data")
        if room is None:
            return
        if event == "activeUsers":
            self.lists[room] = sorted(data)
        elif event == "userJoin" and room in self.lists:
            self.lists[room] = sorted({*self.lists[room], data["username"]})
        elif event == "userLeave" and room in self.lists:
            self.lists[room] = [u for u in self.lists[room] if u != data["username"]]

    async def users(self, room: str, expected: list[str], *, timeout: float = 10) -> None:
        """Wait until the room's user list, as this client keeps it, equals `expected`."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                while self.lists.get(room) != sorted(expected):
                    if self.closed.done():
                        raise ConnectionError(f"socket closed ({self.closed.result()})")
                    await self._changed.wait()

    def received(self, event: str, room: str | None = None) -> list[Frame]:
        return [
            f
            for f in self.frames
            if f["event"] == event and (room is None or f.get("room") == room)
        ]

    async def settle(self, seconds: float = 0.3) -> None:
        """Let in-flight frames arrive (for asserting that something did NOT happen)."""
        await asyncio.sleep(seconds)

"""The clients of `roomcast bench reconnect-storm`: a user that keeps the id of the newest message
it has seen in its room and, when its socket drops, comes back as a page does (PROTOCOL.md: the
same session, `since` that id), retrying with the web client's backoff; and a writer on a
gateway that stays up, whose acknowledged ids tell what each user should have seen.

Where `since` comes from. A user's `last_id` is the newest id of a view known to have no gap:
what a join with history (`msgHistory`, then live) gave it. The events a join brings arrive before
its ack (`msgHistory`, then held live events), so they are kept aside until the ack says whether
that join had history; those of a join without history (2.2: `[]`, then live events, no no-gap
guarantee) and the live events after it are *provisional*: not where the next `since` starts
(that would skip what the missing history held) and not in `seen` (the check counts what the
server gave on joins that promised no gap), so the recovery's `msgHistory` holding them again is
no duplicate.

Frames are parsed with orjson; one process drives every client (see reconnect.py)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import orjson

from .wsclient import WSClient, connect

JOIN_TIMEOUT = 30.0
# the web client's reconnect schedule (services/gateway/static/connection.js): "equal jitter",
# half the window fixed and half random, the window doubling from 1 s up to 30 s
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0


def backoff(attempt: int, rng: random.Random, base: float = BACKOFF_BASE_S) -> float:
    window = min(BACKOFF_MAX_S, base * 2.0**attempt)
    return float(window / 2 + rng.random() * window / 2)


class RefusedError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class StormClient:
    """One socket at a time of one user in one room."""

    def __init__(self, index: int, username: str, room: str) -> None:
        self.index, self.username, self.room = index, username, room
        self.ws: WSClient | None = None
        self.session: str | None = None
        self.last_id: str | None = None  # the newest id of a gapless view: the next `since`
        self.seen: set[str] = set()  # ids delivered on joins with history (the checked view)
        self.provisional: set[str] = set()  # ids seen live after a join without history
        self.duplicates = 0
        self._anchored = False  # live events extend the gapless view (a join had history)
        self._join_ref: str | None = None  # the join in flight, whose events wait for its ack
        self._pending: list[str] = []  # that join's ids (`msgHistory`, held live events)
        self.acked: list[tuple[str, float]] = []  # writer: (id, when acknowledged)
        self.errors: dict[str, int] = {}
        self.lost = asyncio.Event()
        self.lost_at: float | None = None
        self.opened_at: float | None = None
        self.recovered_at: float | None = None
        self.attempts = 0  # joins tried after the drop
        self.connections = 0  # sockets opened after the drop
        self.failure: str | None = None
        self._refs = 0
        self.closing = False  # closed by us: not counted as an error
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._history: asyncio.Future[None] | None = None

    # frames ------------------------------------------------------------------------------
    def on_text(self, text: str, now: int) -> None:
        for line in text.split("\n"):
            frame = orjson.loads(line)
            event = frame.get("event")
            if event == "updateChat" and frame.get("room") == self.room:
                self._live(frame["data"]["id"])
            elif event == "msgHistory" and frame.get("room") == self.room:
                for message in frame["data"]:
                    self._live(message["id"])
                if self._history is not None and not self._history.done():
                    self._history.set_result(None)
            elif event in ("ack", "error") and frame.get("ref") in self._waiting:
                if frame["ref"] == self._join_ref:
                    self._joined(frame)
                waiter = self._waiting.pop(frame["ref"])
                if not waiter.done():
                    waiter.set_result(frame)
            elif event == "error":
                self.error(frame["data"].get("code", "error"))

    def _live(self, message_id: str) -> None:
        if self._join_ref is not None:
            self._pending.append(message_id)  # its join's ack says what it is
        elif self._anchored:
            self._note(message_id)
        else:
            self.provisional.add(message_id)

    def _joined(self, frame: dict[str, Any]) -> None:
        """The join's answer: with history (and recovered, when it had `since`), its events
        extend the gapless view; otherwise they and what follows are provisional."""
        data = frame.get("data")
        pending, self._pending, self._join_ref = self._pending, [], None
        self._anchored = (
            frame["event"] == "ack"
            and isinstance(data, dict)
            and data.get("history") is not False
            and data.get("recovered", True) is True
        )
        if self._anchored:
            for message_id in pending:
                self._note(message_id)
        else:
            self.provisional.update(pending)

    def _note(self, message_id: str) -> None:
        if message_id in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(message_id)
        self.last_id = message_id

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    # requests ----------------------------------------------------------------------------
    async def open(self, url: str) -> None:
        self.lost.clear()
        self.closing = False
        self.ws = await connect(f"{url}/ws?batch=1", self.on_text, timeout=JOIN_TIMEOUT)
        self.ws.closed.add_done_callback(self._closed)
        self.opened_at = time.monotonic()

    def _closed(self, future: asyncio.Future[int | None]) -> None:
        if not self.closing:
            code = None if future.cancelled() else future.result()
            self.error(f"closed_{code if code is not None else 'without_a_close_frame'}")
        if self.lost_at is None:  # the first drop is the one measured
            self.lost_at = time.monotonic()
        self.lost.set()
        self._anchored, self._join_ref, self._pending = False, None, []
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("socket closed"))
        self._waiting.clear()

    async def request(
        self, event: str, data: dict[str, Any], *, join: bool = False
    ) -> dict[str, Any]:
        """The ack's data, or `RefusedError` with the error's code (`join`: the events that
        arrive until its answer belong to this join)."""
        self._refs += 1
        ref = f"{self._refs}"
        if join:
            self._join_ref, self._pending = ref, []
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = waiter
        if self.ws is None or not self.ws.send_text(
            orjson.dumps({"event": event, "data": data, "ref": ref}).decode()
        ):
            self._waiting.pop(ref, None)
            if self._join_ref == ref:
                self._join_ref = None
            raise ConnectionError("socket closed")
        try:
            frame = await asyncio.wait_for(waiter, JOIN_TIMEOUT)
        except TimeoutError:
            self._waiting.pop(ref, None)
            if self._join_ref == ref:
                self._joined({"event": "error"})  # unanswered: what it brought is provisional
            raise
        if frame["event"] == "error":
            raise RefusedError(frame["data"].get("code", "error"))
        result: dict[str, Any] = frame["data"]
        return result

    async def join(self, *, since: bool = False) -> dict[str, Any]:
        """Join the room (with the session and `since` when asked) and wait for its
        `msgHistory` as well as the ack."""
        data: dict[str, Any] = {"username": self.username, "room": self.room}
        if self.session is not None:
            data["session"] = self.session
        if since and self.last_id is not None:
            data["since"] = self.last_id
        self._history = asyncio.get_running_loop().create_future()
        ack = await self.request("userJoin", data, join=True)
        await asyncio.wait_for(self._history, JOIN_TIMEOUT)
        self.session = ack["session"]
        return ack

    async def say(self, body: str) -> None:
        message = await self.request(
            "updateChat", {"username": self.username, "body": body, "time": 0, "room": self.room}
        )
        self.acked.append((message["id"], time.monotonic()))

    async def come_back(self, urls: list[str], deadline: float, rng: random.Random) -> None:
        """After the socket dropped: reconnect to one of `urls` (the next one each time a
        socket is needed) and join with `since`, until the ack says `recovered` or the deadline
        passes. A refused join is tried again on the same socket; a join without history is
        left and joined again (PROTOCOL.md 2.2: "the client may join again later with since")."""
        try:
            await asyncio.wait_for(self.lost.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self.failure = "its socket never dropped"
            return
        while True:
            delay = backoff(self.attempts, rng)
            if time.monotonic() + delay > deadline:
                self.failure = self.failure or "deadline"
                return
            await asyncio.sleep(delay)
            self.attempts += 1
            try:
                if self.ws is None or not self.ws.is_open:
                    await self.open(urls[(self.index + self.connections) % len(urls)])
                    self.connections += 1
                ack = await self.join(since=True)
            except RefusedError as exc:
                self.error(f"join_{exc.code}")
                self.failure = f"join refused: {exc.code}"
                continue
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.error(f"connect_{type(exc).__name__}")
                self.failure = f"{type(exc).__name__}"
                self.close()
                continue
            if ack.get("history") is False:
                self.error("joined_without_history")
                self.failure = "joined without history"
                with contextlib.suppress(RefusedError, TimeoutError, ConnectionError):
                    await self.request("userLeave", {"room": self.room})
                continue
            if ack.get("recovered") is not True:
                self.failure = "recovered: false"
                return
            self.failure = None
            self.recovered_at = time.monotonic()
            return

    def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()
            self.ws = None

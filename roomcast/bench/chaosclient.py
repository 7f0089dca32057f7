"""A chat user who keeps going through faults, as a careful web page does (PROTOCOL.md):

- reconnects with jittered exponential backoff to any gateway that answers, keeping its session;
- re-sends every unacknowledged message under the same id (the server acknowledges a repeat
  again and neither stores nor broadcasts it twice);
- joins all its rooms at once, as a page does;
- re-joins each room with `since` = the last message id it saw; when the ack says
  `"recovered": false`, pages back over `GET /api/rooms/{room}/messages?before=...` until it
  meets a message it has seen;
- when a join came without history (protocol 2.2: `"history": false` and an empty `msgHistory`),
  leaves and joins the room again a few seconds later, with `since` = where the gap began (not
  the newest message seen live meanwhile: that would skip the gap); a join refused
  `unavailable`, or not answered (before 2.2), is tried again after a backoff.

It records what it was shown, per room and per id, and how (history, live, paged back), so
that the bench can audit the run: what it never saw (gaps) and what it was shown twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from .chaoslink import CONNECT_ERRORS, Frame, Link, LinkClosedError
from .deploy import http_get

# Well above the server's request timeout (5 s): a gateway handles one socket's frames one after
# another, so while history is down the third room's join of a socket waits 3 x 5 s.
JOIN_TIMEOUT = 30.0
ACK_TIMEOUT = 12.0  # above the server's publish timeout (10 s)
REJOIN_AFTER = 3.0  # seconds after a join without history before trying again with `since`
PAGE_LIMIT = 200
MAX_PAGES = 50
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
JOIN_LOG_MAX = 40  # the joins after the first ones, in the report, to see what recovery did
RETRYABLE = {"unavailable", "internal", "rate_limited", "username_taken"}


class Clock:
    """Seconds since the run started, on the monotonic clock."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0


class ReconnectError(Exception):
    """This socket cannot go on (closed, or the server refuses what it must accept)."""


@dataclass
class RoomView:
    """What one client saw of one room."""

    shown: Counter[str] = field(default_factory=Counter)  # pushed by the server
    paged: set[str] = field(default_factory=set)  # fetched over HTTP to fill a gap
    last_id: str | None = None
    # Where a gap began: the `since` of a join that came back without history. Later joins ask
    # from here, not from the newest live message, until a join recovers.
    recover_from: str | None = None
    joined_once: bool = False
    history_ids: list[str] = field(default_factory=list)  # the last msgHistory
    history_repeats: list[str] = field(default_factory=list)  # ... already seen when it came
    live_dups: list[str] = field(default_factory=list)
    history_dups: list[str] = field(default_factory=list)
    # the room's users as 2.1 has a client keep them: the snapshot, then joins and leaves
    users: set[str] = field(default_factory=set)

    def seen(self, message_id: str) -> bool:
        return message_id in self.shown or message_id in self.paged


@dataclass
class Counts:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    joins: int = 0
    join_timeouts: int = 0
    history_false: int = 0
    not_recovered: int = 0
    rejoins: int = 0
    pages: int = 0
    page_failures: int = 0
    sent: int = 0
    resent: int = 0
    ack_timeouts: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class ChaosClient:
    """One user: a writer posts to its room at a steady pace; a reader only reads."""

    def __init__(
        self,
        name: str,
        urls: list[str],
        rooms: list[str],
        *,
        clock: Clock,
        first_url: int = 0,
        writer: bool = False,
        interval: float = 0.25,
        seed: int | None = None,
    ) -> None:
        self.name = name
        self.urls = urls
        self.rooms = rooms
        self.clock = clock
        self.writer = writer
        self.interval = interval
        self.rng = random.Random(seed)
        self._first_url = first_url
        self.session: str | None = None
        self.views = {room: RoomView() for room in rooms}
        self.counts = Counts()
        self.pending: deque[tuple[str, str]] = deque()  # (id, room), oldest first
        self.acked: dict[str, tuple[str, float]] = {}  # id -> (room, when acked)
        self.ack_times: list[float] = []
        self.live_times: list[float] = []
        self.disconnect_times: list[float] = []
        self.join_log: list[dict[str, Any]] = []
        self.resend_log: list[dict[str, Any]] = []
        self.dup_log: list[dict[str, Any]] = []  # live updateChat of an id already shown
        self.joined = False  # every room joined on the current socket
        self.stop_writing = asyncio.Event()
        self.halt = asyncio.Event()
        self._seq = 0
        self._rejoin_at: dict[str, float] = {}
        self._link: Link | None = None
        self._attempt = 0

    # what the bench asks -------------------------------------------------------------------
    @property
    def settled(self) -> bool:
        """Connected, every room joined, nothing to recover, nothing waiting for an ack."""
        return (
            self.joined
            and self._link is not None
            and self._link.is_open
            and not self._rejoin_at
            and not self.pending
        )

    async def run(self) -> None:
        """Connect, join, chat, and start over after any failure, until `halt`."""
        turn = self._first_url
        while not self.halt.is_set():
            link = await self._connect(turn)
            turn += 1
            if link is None:
                await self._backoff()
                continue
            try:
                await self._serve(link)
            except (ReconnectError, LinkClosedError, TimeoutError):
                pass
            finally:
                self.joined = False
                self._link = None
                if not self.halt.is_set():
                    self.counts.disconnects += 1
                    self.disconnect_times.append(self.clock.now())
                link.abort()
            if not self.halt.is_set():
                await self._backoff()

    # connecting ----------------------------------------------------------------------------
    async def _connect(self, turn: int) -> Link | None:
        """The first gateway, then the others in random order; None when none answers."""
        first = self.urls[turn % len(self.urls)]
        others = [u for u in self.urls if u != first]
        self.rng.shuffle(others)
        for url in [first, *others]:
            try:
                link = await Link.open(url, self._on_event)
            except CONNECT_ERRORS:
                self.counts.connect_failures += 1
                continue
            self.counts.connects += 1
            return link
        return None

    async def _backoff(self) -> None:
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**self._attempt) * self.rng.uniform(0.5, 1.0)
        self._attempt = min(self._attempt + 1, 10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.halt.wait(), delay)

    async def _serve(self, link: Link) -> None:
        self._link = link
        self._rejoin_at.clear()
        # all rooms at once, as a page does: one join waiting for history holds up no other
        await asyncio.gather(*(self._join(link, room) for room in self.rooms))
        self.joined = True
        self._attempt = 0
        next_send = time.monotonic()
        while not self.halt.is_set():
            if not link.is_open:
                raise ReconnectError("socket closed")
            now = self.clock.now()
            for room, when in list(self._rejoin_at.items()):
                if now >= when:
                    await self._rejoin(link, room)
            if self.writer and (self.pending or not self.stop_writing.is_set()):
                wait = next_send - time.monotonic()
                if wait <= 0 or self.pending:
                    next_send = max(next_send + self.interval, time.monotonic())
                    await self._post(link)
                    continue
            else:
                wait = 0.2
            await self._idle(link, min(wait, 0.2))

    async def _idle(self, link: Link, seconds: float) -> None:
        halt: asyncio.Future[Any] = asyncio.ensure_future(self.halt.wait())
        closed: asyncio.Future[Any] = link.closed
        try:
            await asyncio.wait([halt, closed], timeout=max(seconds, 0.001))
        finally:
            halt.cancel()

    # joining -------------------------------------------------------------------------------
    async def _join(self, link: Link, room: str) -> None:
        view = self.views[room]
        data: dict[str, Any] = {"username": self.name, "room": room}
        if self.session is not None:
            data["session"] = self.session
        since = view.recover_from or view.last_id
        if view.joined_once and since is not None:
            data["since"] = since
        # a `since` older than what was seen: msgHistory repeats what came live meanwhile
        repeats_expected = since != view.last_id
        timeouts = 0
        while True:
            view.history_ids, view.history_repeats = [], []
            try:
                frame = await link.request("userJoin", data, timeout=JOIN_TIMEOUT)
            except TimeoutError:
                self.counts.join_timeouts += 1
                timeouts += 1
                if timeouts >= 2:
                    raise ReconnectError("joins not answered") from None
                continue
            if frame["event"] == "error":
                code = frame["data"]["code"]
                self.counts.errors[f"userJoin:{code}"] += 1
                if code not in RETRYABLE:
                    raise ReconnectError(f"join refused: {code}")
                await self._backoff()
                if self.halt.is_set():
                    raise ReconnectError("halted")
                continue
            break
        ack = frame["data"]
        self.counts.joins += 1
        if len(self.join_log) < JOIN_LOG_MAX:
            self.join_log.append(
                {
                    "t": round(self.clock.now(), 2),
                    "room": room,
                    "since": data.get("since"),
                    "shown": len(view.history_ids),
                    **{k: ack[k] for k in ("already", "history", "recovered") if k in ack},
                }
            )
        self.session = ack.get("session", self.session)
        view.joined_once = True
        if ack.get("already"):
            return
        if ack.get("history") is False:
            self.counts.history_false += 1
            view.recover_from = data.get("since")
            self._rejoin_at[room] = self.clock.now() + REJOIN_AFTER
            return
        if "since" in data and ack.get("recovered") is False:
            self.counts.not_recovered += 1
            oldest = view.history_ids[0] if view.history_ids else None
            if oldest is not None and not await self._page_back(link, room, oldest):
                view.recover_from = data["since"]
                self._rejoin_at[room] = self.clock.now() + REJOIN_AFTER
                return
            view.recover_from = None
            return
        view.recover_from = None
        if "since" in data and ack.get("recovered") is True and not repeats_expected:
            # msgHistory was to hold only what came after `since`: anything seen before is a repeat
            view.history_dups.extend(view.history_repeats)

    async def _rejoin(self, link: Link, room: str) -> None:
        """Leave and join again with `since`: a join that came without history, or a gap that
        paging could not fill."""
        self._rejoin_at.pop(room, None)
        self.counts.rejoins += 1
        try:
            frame = await link.request("userLeave", {"room": room}, timeout=JOIN_TIMEOUT)
        except TimeoutError:
            raise ReconnectError("leave not answered") from None
        if frame["event"] == "error":
            self.counts.errors[f"userLeave:{frame['data']['code']}"] += 1
        await self._join(link, room)

    async def _page_back(self, link: Link, room: str, before: str) -> bool:
        """Fetch older pages until one holds a message already seen; False if a page failed."""
        view = self.views[room]
        for _ in range(MAX_PAGES):
            self.counts.pages += 1
            path = f"/api/rooms/{room}/messages?limit={PAGE_LIMIT}&before={before}"
            body = await http_get(link.host, link.port, path, timeout=10.0)
            if body is None:
                self.counts.page_failures += 1
                return False
            messages = orjson.loads(body)["messages"]
            if not messages:
                return True
            met = False
            for message in messages:
                if view.seen(message["id"]):
                    met = True
                else:
                    view.paged.add(message["id"])
            if met:
                return True
            before = messages[0]["id"]
        return True

    # writing -------------------------------------------------------------------------------
    async def _post(self, link: Link) -> None:
        if not self.pending:
            self._seq += 1
            self.pending.append((f"{self.name}-{self._seq:06d}", self.rooms[0]))
            self.counts.sent += 1
        else:
            self.counts.resent += 1
            if len(self.resend_log) < JOIN_LOG_MAX:
                self.resend_log.append({"t": round(self.clock.now(), 2), "id": self.pending[0][0]})
        message_id, room = self.pending[0]
        data = {
            "username": self.name,
            "body": f"chaos {message_id}",
            "time": 0,
            "room": room,
            "id": message_id,
        }
        try:
            frame = await link.request("updateChat", data, timeout=ACK_TIMEOUT)
        except TimeoutError:
            self.counts.ack_timeouts += 1
            return
        if frame["event"] == "ack":
            self.pending.popleft()
            when = self.clock.now()
            self.acked[message_id] = (room, when)
            self.ack_times.append(when)
            return
        code = frame["data"]["code"]
        self.counts.errors[f"updateChat:{code}"] += 1
        if code == "not_joined":
            raise ReconnectError("not joined")
        if code not in RETRYABLE:
            self.pending.popleft()  # refused for good (counted): never acked, so not "lost"
            return
        await self._backoff()

    # receiving -----------------------------------------------------------------------------
    def _on_event(self, frame: Frame) -> None:
        event = frame.get("event")
        view = self.views.get(frame.get("room", ""))
        if view is None:
            return
        if event == "updateChat":
            message_id = frame["data"]["id"]
            if message_id in view.shown:
                view.live_dups.append(message_id)
                self.dup_log.append({"t": round(self.clock.now(), 2), "id": message_id})
            view.shown[message_id] += 1
            view.last_id = message_id
            self.live_times.append(self.clock.now())
        elif event == "activeUsers":
            view.users = set(frame["data"])
        elif event == "userJoin":
            view.users.add(frame["data"]["username"])
        elif event == "userLeave":
            view.users.discard(frame["data"]["username"])
        elif event == "msgHistory":
            ids = [m["id"] for m in frame["data"]]
            view.history_ids = ids
            view.history_repeats = [i for i in ids if view.seen(i)]
            for message_id in ids:
                view.shown[message_id] += 1
            if ids:
                view.last_id = ids[-1]

    # the audit's view ----------------------------------------------------------------------
    def user_lists(self) -> dict[str, list[str]]:
        """room -> the users this client's list holds now."""
        return {room: sorted(view.users) for room, view in self.views.items()}

    def report(self) -> dict[str, Any]:
        c = self.counts
        return {
            "name": self.name,
            "role": "writer" if self.writer else "reader",
            "rooms": self.rooms,
            "connects": c.connects,
            "connect_failures": c.connect_failures,
            "disconnects": c.disconnects,
            "joins": c.joins,
            "join_timeouts": c.join_timeouts,
            "joins_without_history": c.history_false,
            "joins_not_recovered": c.not_recovered,
            "rejoins": c.rejoins,
            "pages": c.pages,
            "page_failures": c.page_failures,
            "sent": c.sent,
            "resent": c.resent,
            "acked": len(self.acked),
            "unacked": len(self.pending),
            "ack_timeouts": c.ack_timeouts,
            "errors": dict(sorted(c.errors.items())),
            "shown_twice_live": sum(len(v.live_dups) for v in self.views.values()),
            "shown_twice_history": sum(len(v.history_dups) for v in self.views.values()),
            "rejoin_log": self.join_log[len(self.rooms) :],
            "shown_twice_log": self.dup_log[:JOIN_LOG_MAX],
            "resend_log": self.resend_log,
        }

"""A gateway node: its sockets, its one bus subscription, and the frames its clients send.

A connection's frames are handled one at a time, in order, so its messages are published in the
order it sent them; a message's ack waits for its broker confirm but the next frame does not
(`replies.py`: answers in frame order, at most `_IN_FLIGHT` publishes in flight). What each event does is in `events/`; who is in which room is
`Membership`'s; bus deliveries reach sockets through `Relay`. Every failure a frame meets
becomes the protocol's `error` for that frame, logged once with its reason: never a 1011 close.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from collections.abc import Coroutine
from functools import partial
from typing import Any, TypeVar

import structlog

from roomcast.shared import topics
from roomcast.shared.bus import Bus, BusUnavailableError, Subscription
from roomcast.shared.config import Settings
from roomcast.shared.models import RevClock
from roomcast.shared.sessions import SessionSigner
from roomcast.shared.tasks import Supervised

from .auth.tokens import TokenVerifier
from .clients import HistoryClient, PresenceClient
from .connection import CLOSE_RESTART, Close, Connection, Limiters, Send
from .events import HANDLERS
from .flushing import scheduler
from .membership import Membership
from .metrics import CONNECTIONS, ERRORS, FRAMES_IN
from .moderation import Moderation
from .protocol import ClientFrame, ProtocolError, ack_frame, error_frame, parse_frame
from .ratelimit import TokenBucket
from .rawsend import Sink
from .relay import RecentMessages, Relay
from .repair import Repairer
from .replies import Confirming, Replies
from .roomcache import RoomCache
from .shedding import Shedder

log = structlog.get_logger(__name__)

_CHAT_BUDGETS = 100_000  # users whose chat budget is remembered (client input: bounded)
_IN_FLIGHT = 8  # a connection's publishes awaiting a confirm before its next frame waits
T = TypeVar("T")


def _replies(conn: Connection) -> Replies:
    """The connection's ordered answers, made on its first publish (most sockets never write,
    and an idle socket should not carry the queue)."""
    replies = conn.replies
    if replies is None:
        replies = conn.replies = Replies(conn)
    return replies


def _answer(conn: Connection, frame: str, event: str) -> None:
    """Answer a frame now, or behind the answers still waiting for a confirm."""
    if conn.replies is None:
        conn.push(frame, event)
    else:
        conn.replies.send(frame, event)


class ChatGateway:
    def __init__(self, bus: Bus, settings: Settings, signer: SessionSigner) -> None:
        self.id = f"gw-{uuid.uuid4().hex[:12]}"
        self.bus = bus
        self.settings = settings
        self.signer = signer
        self.tokens = TokenVerifier.from_settings(settings)
        self.membership = Membership()
        self.recent = RecentMessages()
        self.revs = RevClock()
        self.room_cache = RoomCache()
        self.relay = Relay(
            self.membership,
            self.recent,
            self.room_cache,
            Shedder(settings.send_queue_seconds),
        )
        self.presence = PresenceClient(bus, settings, self.id)
        self.history = HistoryClient(bus, settings)
        self.repairer = Repairer(self)
        self.moderation = Moderation(self)
        self.draining = False
        self._idle = asyncio.Event()
        self._subscription: Subscription | None = None
        self._heartbeat = Supervised("gateway-heartbeat", self._beat)
        self._background: set[asyncio.Task[Any]] = set()
        self._budgets: OrderedDict[str, TokenBucket] = OrderedDict()

    # lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(
            self.relay.on_message,
            name=self.id,
            on_gap=self._on_gap,
            on_loss=self._on_loss,
        )
        self.membership.bindings.attach(self._subscription)
        # every user's events, once for all (routed locally by username: `Relay`)
        await self.membership.bindings.hold(topics.USER_EVENTS)
        await self.moderation.start()
        self._heartbeat.start()

    def _on_loss(self) -> None:
        self.room_cache.lost()
        self.repairer.on_loss()

    async def _on_gap(self) -> None:
        self.room_cache.resumed()
        await self.repairer.on_gap()

    @property
    def is_ready(self) -> bool:
        return self.bus.is_ready and not self.draining and self._heartbeat.healthy

    async def drain(self) -> None:
        """Close every socket with 1012 (clients reconnect elsewhere) and leave presence, all
        within `drain_seconds`."""
        self.draining = True
        for conn in list(self.membership.connections):
            conn.close_soon(CLOSE_RESTART)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_seconds):
                if self.membership.connections:
                    self._idle.clear()
                    await self._idle.wait()
                if self._background:
                    await asyncio.wait(set(self._background))
        with contextlib.suppress(BusUnavailableError):
            await self.presence.gone()

    async def stop(self) -> None:
        await self._heartbeat.stop()
        await self.repairer.stop()
        with contextlib.suppress(Exception):
            await self.moderation.stop()
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.close()

    def open(self, send: Sink | Send, close: Close, *, batch: bool) -> Connection:
        s = self.settings
        conn = Connection(
            send,
            close,
            batch=batch,
            queue_bytes=s.send_queue_bytes,
            queue_seconds=s.send_queue_seconds,
            limiters=Limiters(
                typing=TokenBucket(s.typing_per_second, s.typing_burst),
                joins=TokenBucket(s.join_per_second, s.join_burst),
                invites=TokenBucket(s.invite_per_second, s.invite_burst),
                reads=TokenBucket(s.rate_per_second, s.rate_burst),
            ),
            flushes=scheduler(s.flush_pace_ms / 1000),
        )
        self.membership.open(conn)
        CONNECTIONS.inc()
        return conn

    async def closed(self, conn: Connection) -> None:
        """The socket is gone: leave every room locally, then tell presence."""
        CONNECTIONS.dec()
        admitted = await self.membership.close(conn)
        if not self.membership.connections:
            self._idle.set()
        if admitted or conn.username is not None:
            try:
                await self.presence.disconnect(conn.id, conn.username, conn.session_hash, admitted)
            except BusUnavailableError as exc:  # the heartbeat roster tells presence later
                log.warning("presence not told of a disconnect", conn=conn.id, reason=str(exc))

    def closed_soon(self, conn: Connection) -> None:
        """Run `closed` in the background: the socket's own task is being cancelled."""
        self.spawn(self.closed(conn))

    def chat_budget(self, conn: Connection) -> TokenBucket:
        """The `updateChat` budget of the connection's user: shared by all of a session's
        sockets on this gateway (2.2), remembered for a bounded number of users."""
        key = conn.session_hash or conn.id
        bucket = self._budgets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.settings.rate_per_second, self.settings.rate_burst)
            self._budgets[key] = bucket
            if len(self._budgets) > _CHAT_BUDGETS:
                self._budgets.popitem(last=False)
        else:
            self._budgets.move_to_end(key)
        return bucket

    # frames ---------------------------------------------------------------------------------
    async def on_frame(self, conn: Connection, data: str | bytes) -> None:
        if isinstance(data, bytes):
            FRAMES_IN.labels("binary").inc()
            self._refuse(conn, ProtocolError("bad_frame", "binary frames are not accepted"))
            return
        try:
            frame = parse_frame(data, self.settings)
        except ProtocolError as exc:
            FRAMES_IN.labels("invalid").inc()
            self._refuse(conn, exc)
            return
        FRAMES_IN.labels(frame.event).inc()
        try:
            result = await HANDLERS[frame.event](self, conn, frame.data)
        except Exception as exc:
            self._refuse(conn, self._failure(exc, frame.event, conn, frame.ref))
        else:
            if isinstance(result, Confirming):
                replies = _replies(conn)
                replies.after(result.confirm, partial(self._confirmed, conn, frame, result.data))
                await replies.wait_below(_IN_FLIGHT)
            elif frame.ref is not None:
                _answer(conn, ack_frame(frame.ref, result), "ack")

    def _confirmed(
        self,
        conn: Connection,
        frame: ClientFrame,
        data: dict[str, object],
        exc: BaseException | None,
    ) -> tuple[str, str] | None:
        """The answer to a frame whose publish is settled: its ack, or why it failed."""
        if exc is None:
            return (ack_frame(frame.ref, data), "ack") if frame.ref is not None else None
        error = self._failure(exc, frame.event, conn, frame.ref)
        ERRORS.labels(error.code).inc()
        return error_frame(error), "error"

    def _failure(
        self, exc: BaseException, event: str, conn: Connection, ref: str | None
    ) -> ProtocolError:
        """Every failure a frame meets, as the protocol's `error` (logged once with its reason)."""
        if isinstance(exc, ProtocolError):
            exc.ref = ref
            return exc
        if isinstance(exc, BusUnavailableError):
            log.warning(
                "a service is unavailable", frame_event=event, conn=conn.id, reason=str(exc)
            )
            return ProtocolError("unavailable", "the service is unavailable; try again", ref)
        log.error("internal error handling a frame", frame_event=event, conn=conn.id, exc_info=exc)
        return ProtocolError("internal", "internal error", ref)

    def _refuse(self, conn: Connection, error: ProtocolError) -> None:
        ERRORS.labels(error.code).inc()
        _answer(conn, error_frame(error), "error")

    def spawn(self, work: Coroutine[object, object, T]) -> asyncio.Task[T]:
        """Run `work` as a task that a drain waits for (a publish in flight, a socket's leave)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _beat(self) -> None:
        """Send presence this gateway's whole roster, so a new presence replica rebuilds from it
        and a silent gateway is noticed."""
        while True:
            try:
                await self.presence.heartbeat(self.membership.roster())
            except BusUnavailableError as exc:
                log.warning("heartbeat not sent", reason=str(exc))
            else:
                self._heartbeat.ran_well()
            served = set(self.membership.rooms())
            self.relay.prune(served)
            self.room_cache.prune(served)
            await asyncio.sleep(self.settings.heartbeat_interval)

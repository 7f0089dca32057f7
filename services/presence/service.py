"""The presence service: membership, `userJoin`/`userLeave`, invitations, private rooms and
names kept for their owners.

It consumes one single-active-consumer queue: one replica works, the others stand by and take
over with an empty state that the gateways' heartbeats (each a full roster) rebuild within one
heartbeat period. Requests are handled one at a time, in queue order, so the state needs no
locks beyond one. Private rooms and name reservations live in the room store, so they outlive
every process; the caches of both are bounded LRUs, dropped when deliveries paused longer than
a gateway's expiry (another replica may have been active meanwhile).

A join storm must not queue up work nobody waits for: a request whose caller has given up (its
deadline, shared/rpc.py) is dropped unanswered, counted as outcome "expired" in
`roomcast_presence_ops_total`, and the gateway's undo of it is a no-op. What a join reads from
the store (privacy, moderation) is read ahead when it is delivered, outside the lock and once
per key (readahead.py), so the lock is held for memory work only; name reservations are loaded
all at once when the replica takes over (reservations.py), so a fresh name needs no read.

Gateways batch their joins (`presence.joins`, rpc.JoinBatch): a batch is judged join by join,
in order, as that many `join` requests would be (each its own snapshot and error; one whose own
deadline passed is skipped), under one acquisition of the lock, with one announcer barrier
before the first and one after the last instead of one per join (announcer.py), and answered
once. A single `join` is still answered (older gateways), and its reply says batches
are taken (`rpc.BATCHES`), which is how a gateway learns it may send them.

Its background tasks (the announcer, the reservation writer, the reaper) are supervised: one
that dies is logged, counted in `roomcast_background_task_restarts_total{task}` and restarted;
`ready()` is False while one is down or keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import structlog
from prometheus_client import Counter, Gauge, Histogram

from roomcast.shared import rpc, topics
from roomcast.shared.auth import is_subject_key
from roomcast.shared.bus import Bus, Consumer, Message, RejectMessage
from roomcast.shared.config import Settings
from roomcast.shared.frames import encode_event
from roomcast.shared.models import MAIN_ROOM
from roomcast.shared.names import username_key
from roomcast.shared.store.base import PrivateRoom, RoomMember, RoomStore, StoreUnavailableError
from roomcast.shared.tasks import Supervised
from roomcast.webhooks.emitter import WebhookEmitter
from roomcast.webhooks.presence import PresenceWebhooks

from .announcer import Announcer
from .moderation import RoomModerator
from .readahead import ReadAhead
from .reservations import NameReservations, refusal
from .state import Changes, PresenceState

log = structlog.get_logger(__name__)
T = TypeVar("T")

OPS = Counter("roomcast_presence_ops_total", "Presence requests handled", ["op", "outcome"])
USERS = Gauge("roomcast_presence_connections", "Connections presence knows of")
BATCH_SIZES = Histogram(
    "roomcast_presence_join_batch_size",
    "Joins per `presence.joins` request",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

PRIVATE_CACHE_CAP = 10_000
PURGE_EVERY = 60.0  # seconds between purges of ended name reservations
EXPIRY_MARGIN = 0.05  # seconds: a reply due later than the deadline minus this is not awaited
# requests whose only effect is their answer (a join that is never answered is undone by its
# gateway); departures are never dropped: they correct the state whoever waits for them
DROPPABLE = frozenset({"join", "joins", "invite", "users", "moderation", "moderate"})
GAVE_UP = rpc.RemoteError("unavailable", "presence did not get to the join before its deadline")


class PresenceService:
    def __init__(
        self,
        bus: Bus,
        rooms: RoomStore,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        *,
        restart_delay: float = 0.1,
        give_up_after: int = 10,
        webhooks: WebhookEmitter | None = None,
        deadlines: Callable[[], float] = time.time,
    ) -> None:
        """`restart_delay` and `give_up_after` tune the supervision of the background tasks:
        the first pause before a restart, and the failures in a row that make presence
        unready. `webhooks`: where room and member events go, when webhooks are on.
        `deadlines`: the clock the callers' deadlines are read on (their wall clock)."""
        self._bus = bus
        self._rooms = rooms
        self._settings = settings
        self._clock = clock
        self._deadlines = deadlines
        self.state = PresenceState()
        # public answers are cached too: only this replica makes rooms private (`_invite`)
        self._private: ReadAhead[str, PrivateRoom | None] = ReadAhead(
            PRIVATE_CACHE_CAP, self._read_private
        )
        self._lock = asyncio.Lock()
        self.webhooks = PresenceWebhooks(webhooks) if webhooks is not None else None
        self.announcer = Announcer(bus, webhooks=self.webhooks)
        self.names = NameReservations(rooms, settings.name_grace_seconds, wall)
        self.moderation = RoomModerator(bus, rooms, wall)
        self._announced: asyncio.Future[Any] | None = None  # what the reply waits for
        self._last_delivery: float | None = None
        self._rebuilding_until = 0.0
        self._consumer: Consumer | None = None

        def supervised(name: str, run: Callable[[], Awaitable[None]]) -> Supervised:
            return Supervised(name, run, first_delay=restart_delay, give_up_after=give_up_after)

        self._tasks = [
            supervised("presence-announcer", self.announcer.run),
            supervised("presence-names", self.names.run),
            supervised("presence-reaper", self._reap),
        ]
        self.announcer.on_round = self._tasks[0].ran_well
        self.names.on_round = self._tasks[1].ran_well
        if self.webhooks is not None:
            self._tasks.append(supervised("presence-webhooks", self.webhooks.run))
            self.webhooks.outbox.on_round = self._tasks[-1].ran_well
        self._handlers = {  # and "join", "joins", which `_handle` starts before the lock
            "leave": self._leave,
            "disconnect": self._disconnect,
            "invite": self._invite,
            "users": self._users,
            "heartbeat": self._heartbeat,
            "gone": self._gone,
            "moderate": self.moderation.moderate,
            "moderation": self.moderation.query,
        }

    async def start(self) -> None:
        for task in self._tasks:
            task.start()
        self._consumer = await self._bus.consume(
            topics.presence_queue(self._settings.exchange),
            topics.PRESENCE_PATTERNS,
            self._handle,
            prefetch=64,
            single_active=True,
        )

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.close()
        for task in reversed(self._tasks):
            await task.stop()
        self.announcer.fail_pending()
        self.names.stop()

    def ready(self) -> bool:
        """For /readyz: every background task is running and not failing over and over."""
        return all(task.healthy for task in self._tasks)

    async def ready_check(self) -> bool:
        return self.ready()

    async def _handle(self, message: Message) -> None:
        op = message.routing_key.rpartition(".")[2]
        if op not in ("join", "joins") and op not in self._handlers:
            raise RejectMessage(f"unknown presence op {op!r}")
        now = self._clock()
        expiry = self._settings.gateway_expiry
        if self._last_delivery is None or now - self._last_delivery > expiry:
            self._forget_caches()
            self._rebuilding_until = now + expiry
            self.state.touch_all(now)  # the silence was ours, not the gateways'
        self._last_delivery = now
        if self._expired(op, message):
            return
        if op == "joins":
            await self._joins(message)
            return
        work: Callable[[], Awaitable[bytes | None]]
        if op == "join":  # decoded before the lock, so that its store reads start now
            req = rpc.decode(rpc.JoinRequest, message)
            self._read_ahead(req)
            work = functools.partial(self._join_one, req)
        else:
            work = functools.partial(self._handlers[op], message)
        async with self._lock:
            if self._expired(op, message):  # it waited for the lock too long
                return
            self._announced = None
            try:
                reply = await work()
            except rpc.RemoteError as exc:
                OPS.labels(op, exc.code).inc()
                reply = rpc.refusal(exc.code, exc.message)
            else:
                OPS.labels(op, "ok").inc()
            USERS.set(len(self.state.conns))
            announced = self._announced
        await self._published(announced, op)
        if reply is not None:
            await self._bus.reply(message, reply)

    async def _joins(self, message: Message) -> None:
        """`presence.joins` (rpc.JoinBatch): each join judged in order as a `join` would be,
        under one acquisition of the lock, answered with one reply once the events before the
        last snapshot are published. A join whose own deadline passed is skipped."""
        batch = rpc.decode(rpc.JoinBatch, message)
        BATCH_SIZES.observe(len(batch.joins))
        for req in batch.joins:
            if not self._gave_up(req):
                self._read_ahead(req)
        entries: list[dict[str, Any]] = []
        judged = 0
        async with self._lock:
            self.announcer.barrier()  # what came before cannot cancel out with these joins
            for req in batch.joins:
                if self._gave_up(req):
                    OPS.labels("join", "expired").inc()
                    entries.append(rpc.outcome_of(GAVE_UP))
                    continue
                judged += 1
                try:
                    admission = await self._join(req, barrier=False)
                except rpc.RemoteError as exc:
                    OPS.labels("join", exc.code).inc()
                    entries.append(rpc.outcome_of(exc))
                else:
                    OPS.labels("join", "ok").inc()
                    entries.append(rpc.outcome_of(None, admission))
            # batches are handled in order: the last one covers those before it; its events
            # are published, or wait for their room's pace (the gateway filters what a
            # snapshot already shows, announcer.py)
            announced = self.announcer.settled()
            USERS.set(len(self.state.conns))
        if not judged:
            return  # nobody waits for any of them
        await self._published(announced, "joins")
        await self._bus.reply(message, orjson.dumps({"result": entries}))

    def _gave_up(self, req: rpc.BatchedJoin) -> bool:
        return self._deadlines() + EXPIRY_MARGIN >= req.deadline

    async def _published(self, announced: asyncio.Future[Any] | None, op: str) -> None:
        """Wait until the events a reply's snapshots follow are published (announcer.py); a
        dead announcer must not hang the reply, though."""
        if announced is None:
            return
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                await asyncio.shield(announced)
        except TimeoutError:
            log.warning("presence events late; join answered without waiting", op=op)

    def _expired(self, op: str, message: Message) -> bool:
        if op not in DROPPABLE or not rpc.expired(message, EXPIRY_MARGIN, self._deadlines):
            return False
        OPS.labels(op, "expired").inc()
        log.debug("request dropped: its caller gave up", op=op)
        return True

    def _read_ahead(self, req: rpc.JoinRequest) -> None:
        """Start the store reads the join will need, while the requests ahead of it run."""
        if req.room != MAIN_ROOM:
            self._private.prefetch(req.room)
        self.moderation.prefetch(req.room)
        key = username_key(req.username)
        if not is_subject_key(req.session_hash) and not self.state.holders(key):
            self.names.prefetch(key)

    # requests ------------------------------------------------------------------------------
    async def _join_one(self, req: rpc.JoinRequest) -> bytes:
        """`presence.join`, from a gateway that sends joins one at a time (an older one, or a
        newer one until it learns from this reply that batches are taken)."""
        return rpc.result({**await self._join(req), rpc.BATCHES: True})

    async def _join(self, req: rpc.JoinRequest, *, barrier: bool = True) -> dict[str, Any]:
        """Judge one join; with `barrier` (a single `join`), its reply waits for what it
        announced (`self._announced`), else the caller sets the barrier (`_joins`)."""
        now = self._clock()
        self.state.touch(req.gateway, now)
        key = username_key(req.username)
        holders = {c.session_hash for c in self.state.holders(key, except_conn=req.conn)}
        if holders and holders != {req.session_hash}:
            raise rpc.RemoteError(
                "username_taken", f"username {req.username!r} is in use by someone else"
            )
        # a token subject's name is the application's word (2.4): reservations do not bind it
        if (
            not holders
            and req.conn not in self.state.conns
            and not is_subject_key(req.session_hash)
        ):
            reserved = await self.names.holder(key)
            if reserved is not None and reserved.session_hash != req.session_hash:
                raise rpc.RemoteError("username_taken", refusal(reserved))
        private = await self._private_room(req.room)
        if private is not None and not private.admits(req.username, req.session_hash):
            raise rpc.RemoteError("room_private", f"room {req.room!r} is private")
        moderation = await self.moderation.admit(
            req.room, req.username, req.session_hash, public=private is None
        )
        changes = self.state.join(
            req.gateway, req.conn, req.username, req.session_hash, req.room, now
        )
        announced = self._apply(changes, barrier=barrier)
        if barrier:
            self._announced = announced
        return {
            "users": self.state.users(req.room),
            "private": private is not None,
            "moderation": moderation.model_dump(mode="json"),
        }

    async def _leave(self, message: Message) -> bytes:
        req = rpc.decode(rpc.LeaveRequest, message)
        if req.conn in self.state.conns or req.username is None or not self._rebuilding():
            changes = self.state.leave(req.conn, req.room)
        else:
            changes = self.state.left_unseen(req.username, None, [req.room], gone=False)
        self._depart(changes)
        return rpc.result()

    async def _disconnect(self, message: Message) -> bytes:
        req = rpc.decode(rpc.DisconnectRequest, message)
        if req.conn in self.state.conns or req.username is None or not self._rebuilding():
            changes = self.state.disconnect(req.conn)
        else:
            changes = self.state.left_unseen(req.username, req.session_hash, req.rooms, gone=True)
        self._depart(changes)
        return rpc.result()

    async def _invite(self, message: Message) -> bytes:
        req = rpc.decode(rpc.InviteRequest, message)
        room, inviter, invitee = req.room, req.username, req.username2
        if invitee == inviter:
            raise rpc.RemoteError("invalid", "you cannot invite yourself")
        if room == MAIN_ROOM:
            raise rpc.RemoteError("room_exists", f"room {room!r} is public")
        if not self.state.in_room(req.conn, room):
            raise rpc.RemoteError("not_joined", f"join room {room!r} before inviting to it")
        private = await self._private_room(room)
        online = self.state.holders(username_key(invitee))
        if not online:
            raise rpc.RemoteError("user_offline", f"{invitee!r} is not online")
        invitee = online[0].username  # as that user spells it (their sockets are bound so)
        invitee_sessions = {c.session_hash for c in online}
        pair = {inviter, invitee}
        if private is not None and (
            private.usernames() != pair or not private.admits(inviter, req.session_hash)
        ):
            raise rpc.RemoteError("room_private", f"room {room!r} is private to another pair")
        if private is None:
            if self.state.others_in(room, inviter, invitee):
                raise rpc.RemoteError("room_exists", f"room {room!r} already has other members")
            members = (
                RoomMember(inviter, req.session_hash),
                RoomMember(invitee, sorted(invitee_sessions)[0]),
            )
            try:
                stored = await self._store(self._rooms.make_private(room, members))
            except rpc.RemoteError:
                self._private.forget(room)  # it may be stored all the same
                raise
            self._private.put(room, stored)
            if stored.members != members and stored.usernames() != pair:
                raise rpc.RemoteError("room_private", f"room {room!r} is private to another pair")
        invitation = {
            "username": inviter,
            "username2": invitee,
            "room": room,
            "url": f"/?room={room}",
        }
        await self._bus.publish(
            topics.user_event(invitee, "newRoom"), encode_event("newRoom", invitation).encode()
        )
        return rpc.result(invitation)

    async def _users(self, message: Message) -> bytes:
        req = rpc.decode(rpc.UsersRequest, message)
        private = await self._private_room(req.room)
        allowed = (
            private is None
            or req.backend
            or (req.username is not None and private.admits(req.username, req.session_hash))
        )
        users = self.state.users(req.room) if allowed else []
        return rpc.result(rpc.UsersReply(private=private is not None, allowed=allowed, users=users))

    async def _heartbeat(self, message: Message) -> None:
        beat = rpc.decode(rpc.Heartbeat, message)
        grace = self._settings.heartbeat_interval
        self._apply(self.state.reconcile(beat, self._clock(), grace))

    async def _gone(self, message: Message) -> None:
        req = rpc.decode(rpc.GatewayGone, message)
        self._apply(self.state.drop_gateway(req.gateway))

    # helpers -------------------------------------------------------------------------------
    def _depart(self, changes: Changes) -> None:
        """Announce a departure, and persist the names it releases, before its request is
        acknowledged: a replica killed in between leaves the request in the queue for the
        next one, which does it again."""
        self._apply(changes)
        waits = [self.announcer.published() if changes.presence else None]
        waits += [self.names.written(r.key) for r in changes.released]
        pending = [w for w in waits if w is not None]
        if pending:
            self._announced = asyncio.gather(*pending)

    def _rebuilding(self) -> bool:
        """Whether this replica's state may still lack connections: for one gateway expiry
        after it took over (its first delivery, or the first after a pause in which another
        replica may have been active), the heartbeats have not all come in yet."""
        return self._clock() < self._rebuilding_until

    def _apply(self, changes: Changes, *, barrier: bool = False) -> asyncio.Future[None] | None:
        """Tell the rooms, and keep the names whose last connection went for their owners."""
        for released in changes.released:
            self.names.reserve(released.key, released.username, released.session_hash)
        return self.announcer.announce(changes, barrier=barrier)

    async def _private_room(self, room: str) -> PrivateRoom | None:
        """Private rooms never become public again, and only the active replica makes them
        (caching what it made), so what it has read stays true while it is active."""
        if room == MAIN_ROOM:
            return None
        return await self._store(self._private.get(room))

    async def _read_private(self, room: str) -> PrivateRoom | None:
        return await self._rooms.get_private(room)

    def _forget_caches(self) -> None:
        self._private.clear()
        self.names.take_over()
        self.moderation.forget_cache()

    async def _store(self, op: Awaitable[T]) -> T:
        try:
            return await op
        except StoreUnavailableError as exc:
            raise rpc.RemoteError("unavailable", "the room store is unavailable") from exc

    async def _reap(self) -> None:
        """Forget gateways that stopped sending heartbeats (killed without a word), and purge
        ended name reservations from the store now and then."""
        period = self._settings.heartbeat_interval / 2
        purged_at = self._clock()
        deaf = False  # the bus was away: no heartbeat could come, so none is missed
        while True:
            await asyncio.sleep(period)
            if not self._bus.is_ready:
                deaf = True
                self._tasks[2].ran_well()
                continue
            async with self._lock:
                if deaf:
                    deaf = False
                    self.state.touch_all(self._clock())
                for gateway in self.state.expired(self._clock(), self._settings.gateway_expiry):
                    log.warning("gateway silent; forgetting its connections", gateway=gateway)
                    self._apply(self.state.drop_gateway(gateway))
            if self._clock() - purged_at >= PURGE_EVERY:
                purged_at = self._clock()
                with contextlib.suppress(StoreUnavailableError):
                    await self.names.purge()
                self.names.refresh()
            self._tasks[2].ran_well()

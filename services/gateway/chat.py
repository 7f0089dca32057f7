"""The gateway's domain: what each client event does, in terms of the bus, presence and history.

A connection's frames are handled one at a time, in order, so its messages are published in the
order it sent them. Joins follow PROTOCOL.md's order: bind to the room, register with presence
(which announces `activeUsers` and `userJoin`), read history (answered only after every earlier
message is stored), send `msgHistory`, then release the live events held back meanwhile, less
those already in the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import orjson
import structlog

from roomcast.shared import rpc, topics
from roomcast.shared.bus import Bus, BusUnavailableError, Subscription
from roomcast.shared.config import Settings
from roomcast.shared.frames import encode_event, error_data
from roomcast.shared.models import ChatMessage
from roomcast.shared.sessions import SessionSigner, session_hash

from .connection import CLOSE_RESTART, BatchTicker, Close, Connection, Send
from .metrics import CONNECTIONS, ERRORS, FRAMES_IN
from .protocol import (
    ChatData,
    ClientFrame,
    JoinData,
    LeaveData,
    NewRoomData,
    ProtocolError,
    TypingData,
    parse_frame,
)
from .ratelimit import TokenBucket
from .registry import Registry
from .relay import RecentMessages, Relay, Seen

log = structlog.get_logger(__name__)


class ChatGateway:
    def __init__(self, bus: Bus, settings: Settings, signer: SessionSigner) -> None:
        self.id = f"gw-{uuid.uuid4().hex[:12]}"
        self.bus = bus
        self.settings = settings
        self.signer = signer
        self.registry = Registry()
        self.recent = RecentMessages()
        self.relay = Relay(self.registry, self.recent)
        self.draining = False
        self._idle = asyncio.Event()
        self._ticker = BatchTicker(settings.batch_tick_ms / 1000)
        self._subscription: Subscription | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._handlers = {
            "userJoin": self._join,
            "userTyping": self._typing,
            "updateChat": self._chat,
            "newRoom": self._new_room,
            "userLeave": self._leave,
        }

    # lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(self.relay.on_message, name=self.id)
        self.registry.attach(self._subscription)
        self._heartbeat = asyncio.create_task(self._beat(), name="gateway-heartbeat")

    async def drain(self) -> None:
        """Close every socket with 1012 (clients reconnect elsewhere) and leave presence, all
        within `drain_seconds`."""
        self.draining = True
        for conn in list(self.registry.connections):
            conn.close_soon(CLOSE_RESTART)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_seconds):
                if self.registry.connections:
                    self._idle.clear()
                    await self._idle.wait()
                if self._background:
                    await asyncio.wait(set(self._background))
        with contextlib.suppress(BusUnavailableError):
            await self.bus.publish(
                topics.presence_request("gone"), rpc.encode(rpc.GatewayGone(gateway=self.id))
            )

    async def stop(self) -> None:
        await self._ticker.stop()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.close()

    def open(self, send: Send, close: Close, *, batch: bool) -> Connection:
        conn = Connection(
            send,
            close,
            ticker=self._ticker if batch else None,
            queue_limit=self.settings.send_queue_frames,
            limiter=TokenBucket(self.settings.rate_per_second, self.settings.rate_burst),
            typing_limiter=TokenBucket(self.settings.typing_per_second, self.settings.typing_burst),
        )
        self.registry.connections.add(conn)
        CONNECTIONS.inc()
        return conn

    async def closed(self, conn: Connection) -> None:
        """The socket is gone: leave every room locally, then tell presence."""
        CONNECTIONS.dec()
        await self.registry.remove(conn)
        if not self.registry.connections:
            self._idle.set()
        if conn.presence_rooms or conn.username is not None:
            with contextlib.suppress(BusUnavailableError):
                await self.bus.publish(
                    topics.presence_request("disconnect"),
                    rpc.encode(rpc.DisconnectRequest(gateway=self.id, conn=conn.id)),
                )

    def closed_soon(self, conn: Connection) -> None:
        """Run `closed` in the background: the socket's own task is being cancelled."""
        task = asyncio.create_task(self.closed(conn))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # frames ---------------------------------------------------------------------------------
    async def on_frame(self, conn: Connection, data: str | bytes) -> None:
        if isinstance(data, bytes):
            FRAMES_IN.labels("binary").inc()
            self._error(conn, ProtocolError("bad_frame", "binary frames are not accepted"))
            return
        try:
            frame = parse_frame(data, self.settings)
        except ProtocolError as exc:
            FRAMES_IN.labels("invalid").inc()
            self._error(conn, exc)
            return
        FRAMES_IN.labels(frame.event).inc()
        try:
            result = await self._handlers[frame.event](conn, frame)
        except ProtocolError as exc:
            exc.ref = frame.ref
            self._error(conn, exc)
        except rpc.RemoteError as exc:
            self._error(conn, ProtocolError(exc.code, exc.message, frame.ref))  # type: ignore[arg-type]
        except BusUnavailableError as exc:
            log.warning("bus unavailable", event=frame.event, error=str(exc))
            self._error(
                conn,
                ProtocolError("unavailable", "the service is unavailable; try again", frame.ref),
            )
        except Exception:
            log.exception("internal error handling a frame", event=frame.event, conn=conn.id)
            self._error(conn, ProtocolError("internal", "internal error", frame.ref))
        else:
            if frame.ref is not None:
                conn.push(encode_event("ack", result, ref=frame.ref), "ack")

    def _error(self, conn: Connection, exc: ProtocolError) -> None:
        ERRORS.labels(exc.code).inc()
        conn.push(encode_event("error", error_data(exc.code, exc.message), ref=exc.ref), "error")

    # events ---------------------------------------------------------------------------------
    def _own(self, conn: Connection, username: str) -> None:
        if conn.username is not None and username != conn.username:
            raise ProtocolError(
                "username_mismatch",
                f"this connection is {conn.username!r}, not {username!r}",
            )

    def _joined(self, conn: Connection, room: str, action: str) -> None:
        if room not in conn.rooms:
            raise ProtocolError("not_joined", f"join room {room!r} before {action} in it")

    async def _join(self, conn: Connection, frame: ClientFrame) -> dict[str, object]:
        data = frame.data
        assert isinstance(data, JoinData)
        self._own(conn, data.username)
        session = self._session_for(conn, data)
        hashed = session_hash(session)
        room = data.room
        if room not in conn.rooms and len(conn.rooms) >= self.settings.max_rooms_per_connection:
            raise ProtocolError(
                "invalid",
                f"a connection may be in at most {self.settings.max_rooms_per_connection} rooms; "
                "leave one first",
            )
        held: list[tuple[str, str, str | None]] = []
        conn.rooms[room] = held
        try:
            await self.registry.enter_room(conn, room)
            # Both asks go out together once the room is bound; the history is only shown if
            # presence admits the joiner.
            registering = asyncio.ensure_future(self._register(conn, data.username, room, hashed))
            reading = asyncio.ensure_future(self._history(room, data.since))
            try:
                await registering
            except BaseException:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
                raise
        except BaseException:
            conn.rooms.pop(room, None)
            await self.registry.leave_room(conn, room)
            raise
        if conn.username is None:
            conn.username, conn.session, conn.session_hash = data.username, session, hashed
            await self.registry.add_user(conn, data.username)
        conn.presence_rooms.add(room)
        try:
            history = await reading
        except BaseException:
            await self._leave_room(conn, room)
            raise
        seen = {m.id for m in history.messages}
        conn.push(
            encode_event("msgHistory", [m.model_dump() for m in history.messages], room=room),
            "msgHistory",
        )
        conn.rooms[room] = None
        for frame_text, event, message_id in held:
            if message_id is None or message_id not in seen:
                conn.push(frame_text, event)
        ack: dict[str, object] = {"room": room, "session": session}
        if data.since is not None:
            ack["recovered"] = bool(history.recovered)
        return ack

    async def _register(self, conn: Connection, username: str, room: str, hashed: str) -> None:
        request = rpc.JoinRequest(
            gateway=self.id, conn=conn.id, username=username, room=room, session_hash=hashed
        )
        await rpc.call(
            self.bus,
            topics.presence_request("join"),
            request,
            timeout=self.settings.request_timeout,
        )

    def _session_for(self, conn: Connection, data: JoinData) -> str:
        if data.session is not None:
            if self.signer.username_of(data.session) != data.username:
                raise ProtocolError("invalid", "the session is not valid for this username")
            if conn.session is not None and data.session != conn.session:
                raise ProtocolError("invalid", "this connection already proved another session")
            return data.session
        return conn.session or self.signer.mint(data.username)

    async def _history(self, room: str, since: str | None) -> rpc.HistoryReply:
        if since is not None:
            query = rpc.HistoryQuery(op="since", since=since, limit=self.settings.recovery_max)
        else:
            query = rpc.HistoryQuery(op="recent", limit=self.settings.history_default)
        result = await rpc.call(
            self.bus, topics.history_request(room), query, timeout=self.settings.request_timeout
        )
        return rpc.HistoryReply.model_validate(result)

    async def _typing(self, conn: Connection, frame: ClientFrame) -> dict[str, object]:
        data = frame.data
        assert isinstance(data, TypingData)
        self._joined(conn, data.room, "typing")
        self._own(conn, data.username)
        if not conn.typing_limiter.take():
            raise ProtocolError(
                "rate_limited",
                f"at most {self.settings.typing_per_second:g} typing events per second; "
                "this one was not sent",
            )
        payload: dict[str, object] = {"username": data.username, "room": data.room}
        await self.bus.publish(
            topics.room_event(data.room, "userTyping"),
            encode_event("userTyping", payload, room=data.room).encode(),
            headers={"origin": conn.id, "ts": f"{time.time():.6f}"},
        )
        return payload

    async def _chat(self, conn: Connection, frame: ClientFrame) -> dict[str, object]:
        data = frame.data
        assert isinstance(data, ChatData)
        self._joined(conn, data.room, "writing")
        self._own(conn, data.username)
        if data.id is not None:
            repeat = self.recent.get(data.room, data.id)
            if repeat is not None:
                stored: dict[str, object] = orjson.loads(repeat.frame)["data"]
                if stored.get("username") != data.username:
                    raise ProtocolError("invalid", "this id belongs to another message")
                return stored
        if not conn.limiter.take():
            raise ProtocolError(
                "rate_limited",
                f"at most {self.settings.rate_per_second:g} messages per second; "
                "this one was not sent",
            )
        message = ChatMessage(
            id=data.id or uuid.uuid4().hex,
            username=data.username,
            body=data.body.strip(),
            time=int(time.time() * 1000),
            room=data.room,
        )
        payload = message.model_dump()
        frame_text = encode_event("updateChat", payload, room=data.room)
        publication = uuid.uuid4().hex[:16]
        self.recent.remember(data.room, message.id, Seen(publication, frame_text, relayed=False))
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                await self.bus.publish(
                    topics.room_event(data.room, "updateChat"),
                    frame_text.encode(),
                    headers={
                        "origin": conn.id,
                        "id": message.id,
                        "pub": publication,
                        "ts": f"{time.time():.6f}",
                    },
                    persistent=True,
                )
        except (BusUnavailableError, TimeoutError) as exc:
            self.recent.forget(data.room, message.id, publication)
            raise BusUnavailableError("message not confirmed") from exc
        return payload

    async def _new_room(self, conn: Connection, frame: ClientFrame) -> dict[str, object]:
        data = frame.data
        assert isinstance(data, NewRoomData)
        self._joined(conn, data.room, "inviting")
        assert conn.username is not None and conn.session_hash is not None
        result = await rpc.call(
            self.bus,
            topics.presence_request("invite"),
            rpc.InviteRequest(
                gateway=self.id,
                conn=conn.id,
                username=conn.username,
                session_hash=conn.session_hash,
                username2=data.username2,
                room=data.room,
            ),
            timeout=self.settings.request_timeout,
        )
        return dict(result)

    async def _leave(self, conn: Connection, frame: ClientFrame) -> dict[str, object]:
        data = frame.data
        assert isinstance(data, LeaveData)
        self._joined(conn, data.room, "leaving")
        await self._leave_room(conn, data.room)
        return {"room": data.room}

    async def _leave_room(self, conn: Connection, room: str) -> None:
        conn.rooms.pop(room, None)
        conn.presence_rooms.discard(room)
        await self.registry.leave_room(conn, room)
        await rpc.call(
            self.bus,
            topics.presence_request("leave"),
            rpc.LeaveRequest(gateway=self.id, conn=conn.id, room=room),
            timeout=self.settings.request_timeout,
        )

    async def _beat(self) -> None:
        """Send presence this gateway's whole roster, so a new presence replica rebuilds from it
        and a silent gateway is noticed."""
        while True:
            try:
                beat = {"gateway": self.id, "connections": self.registry.roster()}
                await self.bus.publish(topics.presence_request("heartbeat"), orjson.dumps(beat))
            except Exception as exc:
                log.warning("heartbeat not sent", error=str(exc))
            await asyncio.sleep(self.settings.heartbeat_interval)

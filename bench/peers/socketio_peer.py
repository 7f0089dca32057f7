"""The chat roomcast replaces, written the way a Python user would write it: python-socketio
with its RabbitMQ client manager (`AsyncAioPikaManager`) on uvicorn, messages and presence in
MongoDB. `roomcast bench --vs socketio` starts one of these per gateway and drives it over
Socket.IO's wire format.

    python bench/peers/socketio_peer.py --port 8100 --amqp amqp://guest:guest@127.0.0.1:5672/ \
        --channel bench-x --mongo mongodb://127.0.0.1:27017 --db peer [--deflate]

Events, as in PROTOCOL.md (payloads without roomcast's envelope; answers by Socket.IO ack):
- `userJoin {username, room}`: enters the room, sends the joiner `msgHistory` (newest 50,
  oldest first), records presence, emits `activeUsers` to the room and `userJoin` to the
  others; acks `{room, session}` (no sessions here: the string is empty).
- `updateChat {username, body, time, room}`: must have joined; stores the message
  (`insert_one`, awaited), emits `updateChat` to the room but the sender; acks the message.
- `userTyping`, `userLeave`, and a disconnect (`userLeave` + `activeUsers` for its rooms).
A refused event is acked with `{"error": {"code", "message"}}`. Private rooms, sessions and
recovery are left out: the bench does not use them.

Everything is python-socketio's and uvicorn's defaults except:
- `--deflate` off (the default here) starts uvicorn with `ws_per_message_deflate=False`, the
  peer's best case; `--deflate` keeps uvicorn's default (on), what a user who changes nothing
  gets (DESIGN.md, "What fan-out costs").
- The manager's queue is declared `exclusive` so it is deleted with its connection and a bench
  run leaves nothing on the broker (python-socketio declares it non-exclusive with a 5-minute
  expiry); it also tells `/healthz` when it is bound. Nothing in the message path changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from typing import Any

import aio_pika
import socketio
import uvicorn
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient

MAX_BODY = 2000
HISTORY = 50


class Manager(socketio.AsyncAioPikaManager):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bound = asyncio.Event()

    async def _queue(self, channel: Any, exchange: Any) -> Any:
        queue = await channel.declare_queue(
            exclusive=True, durable=False, arguments={"x-expires": 300000}
        )
        await queue.bind(exchange)
        self.bound.set()
        return queue


def _refuse(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def build(args: argparse.Namespace) -> Any:
    manager = Manager(args.amqp, channel=args.channel)
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, cors_allowed_origins="*")
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.mongo)
    db = mongo[args.db]
    messages, presence = db["messages"], db["presence"]
    usernames: dict[str, str] = {}

    async def startup() -> None:
        await messages.create_index([("room", ASCENDING), ("_id", DESCENDING)])
        await presence.create_index([("room", ASCENDING)])
        # python-socketio starts its listener at the first connection; start it now, so that
        # the peer is ready (and /healthz says so) before clients arrive.
        sio.manager_initialized = True
        sio.manager.initialize()

    async def shutdown() -> None:
        await mongo.close()

    def joined(sid: str, room: Any) -> bool:
        return isinstance(room, str) and room != sid and room in sio.rooms(sid)

    async def announce(room: str) -> None:
        users = sorted(await presence.distinct("username", {"room": room}))
        await sio.emit("activeUsers", users, room=room)

    async def userJoin(sid: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            return _refuse("invalid", "userJoin needs {username, room}")
        username, room = data.get("username"), data.get("room")
        if not isinstance(username, str) or not 0 < len(username) <= 32:
            return _refuse("invalid", "bad username")
        if not isinstance(room, str) or not 0 < len(room) <= 64:
            return _refuse("invalid", "bad room")
        if usernames.setdefault(sid, username) != username:
            return _refuse("username_mismatch", "this connection has another username")
        await sio.enter_room(sid, room)
        history = await (
            messages.find({"room": room}, {"_id": 0}).sort("_id", DESCENDING).limit(HISTORY)
        ).to_list()
        history.reverse()
        await sio.emit("msgHistory", history, to=sid)
        await presence.update_one(
            {"_id": f"{sid}:{room}"},
            {"$set": {"room": room, "username": username}},
            upsert=True,
        )
        await announce(room)
        await sio.emit("userJoin", {"username": username, "room": room}, room=room, skip_sid=sid)
        return {"room": room, "session": ""}

    async def updateChat(sid: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            return _refuse("invalid", "updateChat needs {username, body, time, room}")
        room = data.get("room")
        if not joined(sid, room):
            return _refuse("not_joined", "join the room before writing in it")
        username = usernames.get(sid)
        if data.get("username") != username:
            return _refuse("username_mismatch", "not this connection's username")
        body = data.get("body")
        if not isinstance(body, str) or not 0 < len(body.strip()) <= MAX_BODY:
            return _refuse("invalid", "bad body")
        message = {
            "id": uuid.uuid4().hex,
            "username": username,
            "body": body.strip(),
            "time": int(time.time() * 1000),
            "room": room,
        }
        await messages.insert_one(dict(message))
        await sio.emit("updateChat", message, room=room, skip_sid=sid)
        return message

    async def userTyping(sid: str, data: Any) -> dict[str, Any]:
        room = data.get("room") if isinstance(data, dict) else None
        if not joined(sid, room):
            return _refuse("not_joined", "join the room before typing in it")
        payload = {"username": usernames.get(sid), "room": room}
        await sio.emit("userTyping", payload, room=room, skip_sid=sid)
        return payload

    async def leave(sid: str, room: str) -> None:
        await sio.leave_room(sid, room)
        await presence.delete_one({"_id": f"{sid}:{room}"})
        await sio.emit("userLeave", {"username": usernames.get(sid), "room": room}, room=room)
        await announce(room)

    async def userLeave(sid: str, data: Any) -> dict[str, Any]:
        room = data.get("room") if isinstance(data, dict) else None
        if not joined(sid, room):
            return _refuse("not_joined", "not in that room")
        await leave(sid, str(room))
        return {"room": room}

    async def disconnect(sid: str, reason: Any = None) -> None:
        for room in [r for r in sio.rooms(sid) if r != sid]:
            with contextlib.suppress(Exception):  # a broker or database hiccup at shutdown
                await leave(sid, room)
        usernames.pop(sid, None)

    for handler in (userJoin, updateChat, userTyping, userLeave, disconnect):
        sio.on(handler.__name__, handler)

    async def health(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        ready = manager.bound.is_set()
        await send(
            {
                "type": "http.response.start",
                "status": 200 if ready else 503,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok" if ready else b"starting"})

    return socketio.ASGIApp(sio, other_asgi_app=health, on_startup=startup, on_shutdown=shutdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--channel", required=True, help="the RabbitMQ exchange to share")
    parser.add_argument("--mongo", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument(
        "--deflate", action="store_true", help="keep uvicorn's permessage-deflate (its default)"
    )
    args = parser.parse_args()
    assert aio_pika  # the manager needs it
    uvicorn.run(
        build(args),
        host=args.host,
        port=args.port,
        log_level="warning",
        ws_per_message_deflate=args.deflate,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()

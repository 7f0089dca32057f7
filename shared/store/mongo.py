"""The MongoDB stores: `MongoMessageStore` and `MongoRoomStore` on PyMongo's asyncio API.

This is the only module that imports pymongo. It runs unchanged against a real MongoDB
(production, docker compose) and SecantusDB (`roomcast dev`, tests).

Documents:
- `messages`: one document per stored message, `{room, id, username, body, time, seq}`.
  `seq` is a number that grows with every stored message (across rooms), so ordering a room by
  `seq` gives the order the messages were stored in. Indexes: unique `(room, id)` (idempotent
  writes) and `(room, seq)` (newest N, after/before a message).
- `counters`: `{_id: "messages", seq}`, the last `seq` handed out. `insert_many` reserves one
  block of numbers per call with an atomic `$inc`, so concurrent writers never share a number
  (history has a single active writer anyway; with more, their batches would interleave).
- `rooms`: one document per private room, `{_id: room, members: [{username, session_hash}] * 2}`.
  Only session hashes are stored, never sessions.

Every pymongo error surfaces as `StoreUnavailableError`, chained to the original; the messages
of these errors never hold the connection URL (it may hold credentials), and neither do logs.
The client belongs to the event loop it was opened on: open, use and close a store on one loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from ..models import ChatMessage
from .base import (
    PrivateRoom,
    RoomMember,
    StoreError,
    StoreUnavailableError,
)

log = structlog.get_logger(__name__)

Document = dict[str, Any]
T = TypeVar("T")

MESSAGES = "messages"
COUNTERS = "counters"
ROOMS = "rooms"

_DUPLICATE_KEY = 11000
_MESSAGE_FIELDS: Document = {"_id": 0, "seq": 0}  # the rest is the ChatMessage
# Concurrent upserts of one new `_id` race: on MongoDB the loser may get a duplicate-key error;
# on SecantusDB (0.7.0b3) it may get `None` from `find_one_and_update(..., upsert=True,
# return_document=AFTER)` although its update was applied. Both mean "try again" (or read back).
_UPSERT_ATTEMPTS = 5


class _MongoStore:
    """What both stores share: one `AsyncMongoClient`, opened lazily, errors mapped."""

    def __init__(
        self,
        url: str,
        db: str,
        *,
        server_selection_timeout: float = 5.0,
        socket_timeout: float = 30.0,
        app_name: str = "roomcast",
    ) -> None:
        """`url` is a `mongodb://` URL (kept private: never logged); `db` the database name.

        `server_selection_timeout` bounds how long an operation waits for an answering server
        (and a connection to it), so a database that is down is an error, not a hang;
        `socket_timeout` bounds one operation on an open connection.
        """
        self._url = url
        self._db_name = db
        self._server_selection_timeout = server_selection_timeout
        self._socket_timeout = socket_timeout
        self._app_name = app_name
        self._client: AsyncMongoClient[Document] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(db={self._db_name!r})"

    @property
    def _db(self) -> AsyncDatabase[Document]:
        if self._client is None:
            raise StoreUnavailableError(f"{type(self).__name__} is not open")
        return self._client[self._db_name]

    async def open(self) -> None:
        """Connect and create indexes; idempotent. Raises `StoreUnavailableError`."""
        if self._client is not None:
            return
        timeout_ms = int(self._server_selection_timeout * 1000)
        try:
            self._client = AsyncMongoClient(
                self._url,
                document_class=dict,
                tz_aware=False,
                appname=self._app_name,
                serverSelectionTimeoutMS=timeout_ms,
                connectTimeoutMS=timeout_ms,
                socketTimeoutMS=int(self._socket_timeout * 1000),
            )
        except PyMongoError as exc:  # a malformed URL or option
            raise StoreUnavailableError(
                f"cannot configure the client: {type(exc).__name__}"
            ) from exc
        try:
            await self._call("create indexes", self._create_indexes())
        except BaseException:
            await self.close()
            raise
        log.info("store opened", store=type(self).__name__, db=self._db_name)

    async def close(self) -> None:
        """Close the client; idempotent, never raises a pymongo error."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await client.close()
        except PyMongoError as exc:
            log.warning("store close failed", store=type(self).__name__, error=type(exc).__name__)

    async def ping(self) -> bool:
        """Whether the database answers now (within the server selection timeout); never raises."""
        if self._client is None:
            return False
        try:
            await self._client.admin.command("ping")
        except Exception:  # a readiness probe answers, it does not raise
            return False
        return True

    async def _create_indexes(self) -> None:
        """Create this store's indexes (idempotent on the server)."""

    async def _call(self, operation: str, awaitable: Awaitable[T]) -> T:
        """Await a database call, turning any pymongo error into `StoreUnavailableError`."""
        try:
            return await awaitable
        except PyMongoError as exc:
            raise _unavailable(operation, exc) from exc


def _unavailable(operation: str, exc: PyMongoError) -> StoreUnavailableError:
    # Only the class name and code: pymongo's own text may be long, and the chained exception
    # keeps it for a traceback.
    code = getattr(exc, "code", None)
    detail = type(exc).__name__ if code is None else f"{type(exc).__name__} (code {code})"
    return StoreUnavailableError(f"mongo {operation} failed: {detail}")


class MongoMessageStore(_MongoStore):
    """`MessageStore` on MongoDB: messages of every room, in stored order, unique on (room, id)."""

    @property
    def _messages(self) -> AsyncCollection[Document]:
        return self._db[MESSAGES]

    async def _create_indexes(self) -> None:
        await self._messages.create_index(
            [("room", ASCENDING), ("id", ASCENDING)], unique=True, name="room_id"
        )
        await self._messages.create_index(
            [("room", ASCENDING), ("seq", ASCENDING)], name="room_seq"
        )
        # Create the counter now, so that reservations never race on its first upsert.
        with contextlib.suppress(DuplicateKeyError):
            await self._db[COUNTERS].update_one(
                {"_id": MESSAGES}, {"$setOnInsert": {"seq": 0}}, upsert=True
            )

    async def insert_many(self, messages: list[ChatMessage]) -> list[ChatMessage]:
        """Store in list order, skipping any whose (room, id) is stored already.

        Returns, for each input in order, the message as stored: the earlier one for a repeat
        (stored by an earlier call, or earlier in this list).
        """
        if not messages:
            return []
        firsts: dict[tuple[str, str], ChatMessage] = {}
        for message in messages:
            firsts.setdefault((message.room, message.id), message)
        fresh = list(firsts.values())
        last = await self._reserve_seq(len(fresh))
        first_seq = last - len(fresh) + 1
        docs = [{**m.model_dump(), "seq": first_seq + i} for i, m in enumerate(fresh)]
        duplicates: list[tuple[str, str]] = []
        try:
            await self._messages.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            details = exc.details
            errors = details.get("writeErrors", [])
            if details.get("writeConcernErrors") or any(
                e.get("code") != _DUPLICATE_KEY for e in errors
            ):
                raise _unavailable("insert_many", exc) from exc
            duplicates = [(fresh[e["index"]].room, fresh[e["index"]].id) for e in errors]
        except PyMongoError as exc:
            raise _unavailable("insert_many", exc) from exc
        if duplicates:
            stored = await self._find_many(duplicates)
            missing = [key for key in duplicates if key not in stored]
            if missing:
                raise StoreError(f"duplicate key reported for {len(missing)} unstored message(s)")
            firsts.update(stored)
        return [firsts[(m.room, m.id)] for m in messages]

    async def _reserve_seq(self, count: int) -> int:
        """Reserve `count` numbers; returns the last one (the block ends there).

        A call that gets no answer to a racing first upsert (see `_UPSERT_ATTEMPTS`) reserves
        again: the lost block only leaves a gap, and `seq` need not be dense.
        """
        for _ in range(_UPSERT_ATTEMPTS):
            try:
                counter = await self._db[COUNTERS].find_one_and_update(
                    {"_id": MESSAGES},
                    {"$inc": {"seq": count}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                continue
            except PyMongoError as exc:
                raise _unavailable("reserve seq", exc) from exc
            if counter is not None:
                return int(counter["seq"])
        raise StoreUnavailableError("mongo reserve seq failed: the counter did not settle")

    async def _find_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], ChatMessage]:
        by_room: dict[str, list[str]] = {}
        for room, message_id in keys:
            by_room.setdefault(room, []).append(message_id)
        query = {"$or": [{"room": room, "id": {"$in": ids}} for room, ids in by_room.items()]}
        docs = await self._call("find", self._messages.find(query, _MESSAGE_FIELDS).to_list())
        found = (ChatMessage.model_validate(doc) for doc in docs)
        return {(m.room, m.id): m for m in found}

    async def get(self, room: str, message_id: str) -> ChatMessage | None:
        doc = await self._call(
            "get", self._messages.find_one({"room": room, "id": message_id}, _MESSAGE_FIELDS)
        )
        return None if doc is None else ChatMessage.model_validate(doc)

    async def newest(self, room: str, limit: int) -> list[ChatMessage]:
        """The newest `limit` messages of the room, oldest first."""
        return await self._page(room, None, limit, newest_first=True)

    async def after(self, room: str, message_id: str, limit: int) -> list[ChatMessage] | None:
        """Up to `limit` messages stored after `message_id`, oldest first; None if it is unknown."""
        seq = await self._seq_of(room, message_id)
        if seq is None:
            return None
        return await self._page(room, {"$gt": seq}, limit, newest_first=False)

    async def before(
        self, room: str, message_id: str | None, limit: int
    ) -> list[ChatMessage] | None:
        """Up to `limit` messages stored before `message_id` (or the newest when None), oldest
        first; None if `message_id` is unknown."""
        if message_id is None:
            return await self.newest(room, limit)
        seq = await self._seq_of(room, message_id)
        if seq is None:
            return None
        return await self._page(room, {"$lt": seq}, limit, newest_first=True)

    async def _seq_of(self, room: str, message_id: str) -> int | None:
        doc = await self._call(
            "find seq",
            self._messages.find_one({"room": room, "id": message_id}, {"_id": 0, "seq": 1}),
        )
        return None if doc is None else int(doc["seq"])

    async def _page(
        self, room: str, seq_range: Document | None, limit: int, *, newest_first: bool
    ) -> list[ChatMessage]:
        """Up to `limit` messages of the room within `seq_range`, the newest (or the oldest)
        ones when `newest_first` (or not); returned oldest first."""
        if limit <= 0:  # MongoDB reads limit(0) as "no limit"
            return []
        query: Document = {"room": room}
        if seq_range is not None:
            query["seq"] = seq_range
        cursor = (
            self._messages.find(query, _MESSAGE_FIELDS)
            .sort("seq", DESCENDING if newest_first else ASCENDING)
            .limit(limit)
        )
        docs = await self._call("find", cursor.to_list())
        if newest_first:
            docs.reverse()
        return [ChatMessage.model_validate(doc) for doc in docs]


class MongoRoomStore(_MongoStore):
    """`RoomStore` on MongoDB: private rooms and their two members (session hashes only)."""

    @property
    def _rooms(self) -> AsyncCollection[Document]:
        return self._db[ROOMS]

    async def get_private(self, room: str) -> PrivateRoom | None:
        doc = await self._call("get_private", self._rooms.find_one({"_id": room}))
        return None if doc is None else _room_from_doc(doc)

    async def make_private(self, room: str, members: tuple[RoomMember, RoomMember]) -> PrivateRoom:
        """Make the room private to the pair unless it already is private: returns what is stored
        (the existing room when another pair owns it, so the caller can refuse).

        One atomic upsert whose `$setOnInsert` only writes when the room has no document yet,
        so an existing pair is never overwritten.
        """
        stored = [{"username": m.username, "session_hash": m.session_hash} for m in members]
        for _ in range(_UPSERT_ATTEMPTS):
            try:
                doc = await self._rooms.find_one_and_update(
                    {"_id": room},
                    {"$setOnInsert": {"members": stored}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                doc = None  # lost a race with a concurrent first upsert: read the winner
            except PyMongoError as exc:
                raise _unavailable("make_private", exc) from exc
            if doc is None:
                doc = await self._call("make_private", self._rooms.find_one({"_id": room}))
            if doc is not None:
                return _room_from_doc(doc)
        raise StoreUnavailableError("mongo make_private failed: the room did not settle")


async def server_pid(url: str, seconds: float) -> int | None:
    """The process id a MongoDB server at `url` reports (`serverStatus`), if it answers `ping`
    within `seconds`; else None. For `SecantusServer`, to tell its own child from a stranger."""
    timeout_ms = max(int(seconds * 1000), 1)
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        url,
        directConnection=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=timeout_ms,
    )
    try:
        await client.admin.command("ping")
        status = await client.admin.command("serverStatus")
    except Exception:  # not answering (yet), whatever the reason
        return None
    finally:
        await client.close()
    pid = status.get("pid")
    return pid if isinstance(pid, int) else None


def _room_from_doc(doc: Document) -> PrivateRoom:
    first, second = (RoomMember(m["username"], m["session_hash"]) for m in doc["members"])
    return PrivateRoom(room=str(doc["_id"]), members=(first, second))

"""The MongoDB stores: `MongoMessageStore` and `MongoRoomStore` on PyMongo's asyncio API.

This is the only module that imports pymongo. It runs unchanged against a real MongoDB
(production, docker compose) and SecantusDB (`roomcast dev`, tests).

Documents:
- `messages`: one document per stored message, `{room, id, username, body, time, rev, seq}`,
  plus `edited`, `deleted`, `reactions` (`[{emoji, users}]`: emoji are not safe as field names)
  when set, and `author` (the author's identity, never sent to clients).
  `seq` is a number that grows with every stored message (across rooms), so ordering a room by
  `seq` gives the order the messages were stored in; `rev` (PROTOCOL.md 2.3) grows with every
  change to a room. Indexes: unique `(room, id)` (idempotent writes), `(room, seq)` (newest N,
  after/before a message) and `(room, rev)` (`since_rev`).
- `revs`: `{_id: room, rev}`, at least the room's largest rev. The writer reads it once per room,
  then hands revs out from memory (`counters.RoomRevs`) and, before writing a rev above it,
  raises it with `$max` some way ahead of that rev: a crash in between leaves a gap, never a
  repeat, and a writer that takes over starts above every rev handed out. Reading then raising
  is safe with one writer: history's single active consumer, which calls `forget_counters`
  when another replica may have written meanwhile.
- `markers`: `{room, reader, id, seq}`, a reader's read marker (`seq` of its message), unique on
  `(room, reader)`; it only moves to a larger `seq`.
- `counters`: `{_id: "messages", seq}`, the last `seq` reserved. The writer reserves a block of
  numbers at a time with an atomic `$inc` (`counters.SeqBlock`) and hands them out from memory,
  so concurrent writers never share a number (history has a single active writer anyway; with
  more, their batches would interleave); what a block leaves unused is a gap.
- `rooms`: one document per private room, `{_id: room, members: [{username, session_hash}] * 2}`.
  Only session hashes are stored, never sessions.
- `names`: one document per reserved name, `{_id: key, username, session_hash, expires,
  expires_at}` (`expires` in seconds since the epoch, what reads compare; `expires_at` the same
  as a date, for a TTL index that lets MongoDB drop ended reservations by itself; presence
  also purges them, for servers without TTL monitors).
- `moderation`: one document per moderated room, `{_id: room, version, owner: {username,
  identity}, mutes: [{key, username, until}], bans: [{key, username}]}`. Presence is its one
  writer; a change replaces the document only if `version` is still the one it read (an insert
  for the first), and reads again when it is not, so two writers never lose a change.

Every pymongo error surfaces as `StoreUnavailableError`, chained to the original; the messages
of these errors never hold the connection URL (it may hold credentials), and neither do logs.
The client belongs to the event loop it was opened on: open, use and close a store on one loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from prometheus_client import Counter
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from ..models import ChatMessage
from ..moderation import RoomModeration, RoomOwner, Sanction, SanctionKind
from .base import (
    MAX_DISTINCT_REACTIONS,
    UNREAD_CAP,
    Inserted,
    NameReservation,
    PrivateRoom,
    ReadState,
    ReadTail,
    RoomMember,
    StoreError,
    StoreUnavailableError,
    TailEntry,
    deleted,
    edited,
    lifted,
    not_found,
    owned,
    reacted,
    sanctioned,
)
from .counters import RoomRevs, SeqBlock

log = structlog.get_logger(__name__)

RESERVATIONS = Counter(
    "roomcast_store_counter_reservations_total",
    "Round trips that reserved seq numbers or raised rooms' rev counters ahead",
    ["counter"],
)  # counter: "seq" or "rev"
REVS_LOADED = Counter(
    "roomcast_store_room_revs_loaded_total", "Rooms whose rev counter the writer read"
)

Document = dict[str, Any]
T = TypeVar("T")

MESSAGES = "messages"
COUNTERS = "counters"
ROOMS = "rooms"
NAMES = "names"
REVS = "revs"
MODERATION = "moderation"
MARKERS = "markers"

_DUPLICATE_KEY = 11000
_MESSAGE_FIELDS: Document = {"_id": 0, "seq": 0, "author": 0}  # the rest is the ChatMessage
_TAIL_FIELDS: Document = {"_id": 0, "seq": 1, "id": 1, "username": 1, "deleted": 1}
_CHANGING = ("body", "rev", "edited", "deleted", "reactions")  # what a change may rewrite
# Concurrent upserts of one new `_id` race: on MongoDB the loser may get a duplicate-key error;
# on SecantusDB (0.7.0b3) it may get `None` from `find_one_and_update(..., upsert=True,
# return_document=AFTER)` although its update was applied. Both mean "try again" (or read back).
_UPSERT_ATTEMPTS = 5


class _MongoStore:
    """What both stores share: one `AsyncMongoClient`, opened lazily, errors mapped."""

    # Whether the driver retries a failed write once by itself (MongoDB's retryable writes).
    retry_writes = True

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
                retryWrites=self.retry_writes,
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
    """`MessageStore` on MongoDB: messages of every room, in stored order, unique on (room, id).

    Its `seq` and rev counters are handed out from memory between reservations (see the module
    docstring), which is safe for the one writer it assumes."""

    # Off: its writes are idempotent (the unique index, markers that only move forward, changes
    # conditional on the rev judged) or allow gaps (the counters), and history requeues a write
    # that failed, or answers `unavailable`. A server records every retryable write: SecantusDB
    # then scans up to 10,000 such records twice per write, on every batch.
    retry_writes = False

    def __init__(self, url: str, db: str, **options: Any) -> None:
        """As `_MongoStore`."""
        super().__init__(url, db, **options)
        self._seqs = SeqBlock()
        self._revs = RoomRevs()

    def forget_counters(self) -> None:
        """Another writer may have written: read the counters again before the next write."""
        self._seqs = SeqBlock()
        self._revs = RoomRevs()

    @property
    def _messages(self) -> AsyncCollection[Document]:
        return self._db[MESSAGES]

    @property
    def _markers(self) -> AsyncCollection[Document]:
        return self._db[MARKERS]

    async def _create_indexes(self) -> None:
        await self._messages.create_index(
            [("room", ASCENDING), ("id", ASCENDING)], unique=True, name="room_id"
        )
        await self._messages.create_index(
            [("room", ASCENDING), ("seq", ASCENDING)], name="room_seq"
        )
        await self._messages.create_index(
            [("room", ASCENDING), ("rev", ASCENDING)], name="room_rev"
        )
        await self._markers.create_index(
            [("room", ASCENDING), ("reader", ASCENDING)], unique=True, name="room_reader"
        )
        # Create the counter now, so that reservations never race on its first upsert.
        with contextlib.suppress(DuplicateKeyError):
            await self._db[COUNTERS].update_one(
                {"_id": MESSAGES}, {"$setOnInsert": {"seq": 0}}, upsert=True
            )

    async def insert_many(
        self, messages: list[ChatMessage], authors: Sequence[str | None] | None = None
    ) -> list[ChatMessage]:
        """Store in list order, skipping any whose (room, id) is stored already; `authors`, when
        given, holds each message's author identity.

        Returns, for each input in order, the message as stored, with its rev: the earlier one
        for a repeat (stored by an earlier call, or earlier in this list). The unique (room, id)
        index finds repeats of earlier calls, which are rare (a redelivery, a retried publish):
        one has taken a rev and a seq then, a gap, harmless; only then are they read back.
        """
        return (await self.insert_new(messages, authors)).messages

    async def insert_new(
        self, messages: list[ChatMessage], authors: Sequence[str | None] | None = None
    ) -> Inserted:
        """`insert_many`; an input is fresh when it is the first of its key in the list and
        neither the lookup nor the insert found it stored."""
        if not messages:
            return Inserted([], [])
        firsts: dict[tuple[str, str], ChatMessage] = {}
        author_of: dict[tuple[str, str], str | None] = {}
        for i, message in enumerate(messages):
            key = (message.room, message.id)
            if key not in firsts:
                firsts[key] = message
                author_of[key] = authors[i] if authors is not None else None
        new_keys = list(firsts)
        revs = await self._take_revs([(room, firsts[(room, i)].rev) for room, i in new_keys])
        for key, rev in zip(new_keys, revs, strict=True):
            firsts[key] = firsts[key].model_copy(update={"rev": rev})
        fresh = [firsts[key] for key in new_keys]
        first_seq = await self._take_seqs(len(fresh))
        docs = [_document(m, author_of[(m.room, m.id)], first_seq + i) for i, m in enumerate(fresh)]
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
        return Inserted(
            [firsts[(m.room, m.id)] for m in messages], _fresh(messages, new_keys, duplicates)
        )

    async def _take_seqs(self, count: int) -> int:
        """The first of `count` seq numbers in a row, from memory while the block lasts."""
        block = self._seqs
        first = block.take(count)
        if first is None:
            size = block.wanted(count)
            first = block.reserved(await self._reserve_seq(size), size, count)
            RESERVATIONS.labels("seq").inc()
        return first

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

    async def _take_revs(self, proposals: list[tuple[str, int]]) -> list[int]:
        """The revs of changes to come, one per (room, proposed rev) in order, each above the
        room's largest so far; a room's stored counter is read the first time, and raised
        (ahead) before a rev above it is returned."""
        revs = self._revs
        rooms = list(dict.fromkeys(room for room, _ in proposals))
        while missing := revs.unknown(rooms):  # once, unless a load let some go meanwhile
            docs = await self._call(
                "find revs", self._db[REVS].find({"_id": {"$in": missing}}).to_list()
            )
            stored = {str(doc["_id"]): int(doc.get("rev", 0)) for doc in docs}
            for room in missing:
                revs.loaded(room, stored.get(room, 0))
            REVS_LOADED.inc(len(missing))
        taken = [revs.take(room, proposed) for room, proposed in proposals]
        tops = revs.to_raise(rooms)
        if tops:
            raise_to = [
                UpdateOne({"_id": room}, {"$max": {"rev": top}}, upsert=True)
                for room, top in tops.items()
            ]
            await self._call("raise revs", self._db[REVS].bulk_write(raise_to, ordered=False))
            revs.raised(tops)
            RESERVATIONS.labels("rev").inc()
        return taken

    async def _find_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], ChatMessage]:
        by_room: dict[str, list[str]] = {}
        for room, message_id in keys:
            by_room.setdefault(room, []).append(message_id)
        # One `{room, id: {$in}}` query per room, not one `$or` of them: each is an index range
        # on (room, id) everywhere, while SecantusDB answers an `$or` by scanning the whole
        # collection (120 ms against 1 ms for 20 ids among 5,000 messages), on every batch.
        found: list[ChatMessage] = []
        for room, ids in by_room.items():
            query = {"room": room, "id": {"$in": ids}}
            docs = await self._call("find", self._messages.find(query, _MESSAGE_FIELDS).to_list())
            found.extend(_message(doc) for doc in docs)
        return {(m.room, m.id): m for m in found}

    async def get(self, room: str, message_id: str) -> ChatMessage | None:
        doc = await self._call(
            "get", self._messages.find_one({"room": room, "id": message_id}, _MESSAGE_FIELDS)
        )
        return None if doc is None else _message(doc)

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
        return [_message(doc) for doc in docs]

    async def since_rev(self, room: str, rev: int, limit: int) -> list[ChatMessage]:
        """Up to `limit` messages whose rev is above `rev`, in rev order."""
        if limit <= 0:
            return []
        cursor = (
            self._messages.find({"room": room, "rev": {"$gt": rev}}, _MESSAGE_FIELDS)
            .sort("rev", ASCENDING)
            .limit(limit)
        )
        return [_message(doc) for doc in await self._call("since_rev", cursor.to_list())]

    async def _change(
        self,
        room: str,
        message_id: str,
        proposed: int,
        judge: Callable[[ChatMessage, str | None], ChatMessage | None],
    ) -> ChatMessage:
        """Apply what `judge` makes of the stored message and its author; a None verdict
        changes nothing. The write is conditional on the rev that was judged, so a change that
        raced in between (only possible with two writers) makes it judge again."""
        for _ in range(_UPSERT_ATTEMPTS):
            doc = await self._call(
                "get", self._messages.find_one({"room": room, "id": message_id}, {"_id": 0})
            )
            if doc is None:
                raise not_found(room, message_id)
            stored = _message(doc)
            changed = judge(stored, doc.get("author"))
            if changed is None:
                return stored
            [rev] = await self._take_revs([(room, proposed)])
            fresh = changed.model_copy(update={"rev": rev})
            judged = {"room": room, "id": message_id, "rev": doc.get("rev", {"$exists": False})}
            result = await self._call(
                "change", self._messages.update_one(judged, _change_update(fresh))
            )
            if result.matched_count:
                return fresh
        raise StoreUnavailableError("mongo change failed: the message kept changing")

    async def edit(
        self,
        room: str,
        message_id: str,
        *,
        author: str,
        username: str,
        body: str,
        at: int,
        rev: int,
    ) -> ChatMessage:
        return await self._change(
            room,
            message_id,
            rev,
            lambda m, a: edited(m, a, author=author, username=username, body=body, at=at),
        )

    async def delete(
        self,
        room: str,
        message_id: str,
        *,
        author: str,
        username: str,
        moderator: bool = False,
        rev: int,
    ) -> ChatMessage:
        return await self._change(
            room,
            message_id,
            rev,
            lambda m, a: deleted(m, a, author=author, username=username, moderator=moderator),
        )

    async def react(
        self,
        room: str,
        message_id: str,
        *,
        username: str,
        emoji: str,
        add: bool,
        rev: int,
        max_distinct: int = MAX_DISTINCT_REACTIONS,
    ) -> ChatMessage:
        return await self._change(
            room,
            message_id,
            rev,
            lambda m, _: reacted(
                m, username=username, emoji=emoji, add=add, max_distinct=max_distinct
            ),
        )

    async def mark_read(self, room: str, reader: str, message_id: str) -> str:
        """Move the marker forward in one conditional upsert: a marker at or past the message
        does not match, and its upsert then fails on the unique (room, reader) index."""
        seq = await self._seq_of(room, message_id)
        if seq is None:
            raise not_found(room, message_id)
        doc: Document | None
        try:
            doc = await self._markers.find_one_and_update(
                {"room": room, "reader": reader, "seq": {"$lt": seq}},
                {"$set": {"seq": seq, "id": message_id}},
                {"_id": 0, "id": 1},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            doc = None  # the marker is there already, at or past the message
        except PyMongoError as exc:
            raise _unavailable("mark_read", exc) from exc
        if doc is None:
            doc = await self._call(
                "mark_read", self._markers.find_one({"room": room, "reader": reader}, {"id": 1})
            )
        if doc is None:
            raise StoreUnavailableError("mongo mark_read failed: the marker did not settle")
        return str(doc["id"])

    async def read_state(self, room: str, reader: str, username: str | None) -> ReadState:
        marker = await self._call(
            "read_state",
            self._markers.find_one({"room": room, "reader": reader}, {"_id": 0, "id": 1, "seq": 1}),
        )
        query: Document = {"room": room, "deleted": {"$ne": True}}
        if username is not None:
            query["username"] = {"$ne": username}
        if marker is not None:
            query["seq"] = {"$gt": marker["seq"]}
        unread = await self._call(
            "count unread", self._messages.count_documents(query, limit=UNREAD_CAP)
        )
        return ReadState(None if marker is None else str(marker["id"]), int(unread))

    async def read_tail(self, room: str, limit: int) -> ReadTail:
        """Two reads: the room's markers, and its newest `limit` + 1 messages (by `(room, seq)`,
        only the fields a count needs); the one beyond `limit`, if any, gives the floor."""
        markers = await self._call(
            "read_tail markers",
            self._markers.find(
                {"room": room}, {"_id": 0, "reader": 1, "seq": 1, "id": 1}
            ).to_list(),
        )
        docs = await self._call(
            "read_tail messages",
            self._messages.find({"room": room}, _TAIL_FIELDS)
            .sort("seq", DESCENDING)
            .limit(max(0, limit) + 1)
            .to_list(),
        )
        floor = int(docs[limit]["seq"]) if len(docs) > limit else None
        tail = [
            TailEntry(int(d["seq"]), str(d["id"]), str(d["username"]), d.get("deleted") is True)
            for d in reversed(docs[:limit])
        ]
        return ReadTail(
            {str(m["reader"]): (int(m["seq"]), str(m["id"])) for m in markers}, tail, floor
        )


class MongoRoomStore(_MongoStore):
    """`RoomStore` on MongoDB: private rooms and their two members (session hashes only)."""

    @property
    def _rooms(self) -> AsyncCollection[Document]:
        return self._db[ROOMS]

    @property
    def _names(self) -> AsyncCollection[Document]:
        return self._db[NAMES]

    async def _create_indexes(self) -> None:
        await self._names.create_index("expires_at", expireAfterSeconds=0, name="names_ttl")

    async def reserve_name(self, reservation: NameReservation) -> None:
        doc = {
            "username": reservation.username,
            "session_hash": reservation.session_hash,
            "expires": reservation.expires,
            "expires_at": datetime.fromtimestamp(reservation.expires, UTC).replace(tzinfo=None),
        }
        await self._call(
            "reserve_name",
            self._names.replace_one({"_id": reservation.key}, doc, upsert=True),
        )

    async def get_reservation(self, key: str, now: float) -> NameReservation | None:
        doc = await self._call(
            "get_reservation", self._names.find_one({"_id": key, "expires": {"$gt": now}})
        )
        return None if doc is None else _reservation(doc)

    async def reservations(self, now: float, limit: int) -> list[NameReservation]:
        if limit <= 0:
            return []  # MongoDB reads a limit of 0 as none at all
        cursor = self._names.find({"expires": {"$gt": now}}, {"expires_at": 0}).limit(limit)
        return [_reservation(doc) for doc in await self._call("reservations", cursor.to_list())]

    async def purge_reservations(self, now: float) -> int:
        result = await self._call(
            "purge_reservations", self._names.delete_many({"expires": {"$lte": now}})
        )
        return int(result.deleted_count)

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

    @property
    def _moderation(self) -> AsyncCollection[Document]:
        return self._db[MODERATION]

    async def get_moderation(self, room: str) -> RoomModeration:
        doc = await self._call("get_moderation", self._moderation.find_one({"_id": room}))
        if doc is None:
            return RoomModeration(room=room)
        fields = {k: v for k, v in doc.items() if k != "_id"}
        return RoomModeration.model_validate({"room": room, **fields})

    async def _moderate(
        self, room: str, change: Callable[[RoomModeration], RoomModeration | None]
    ) -> RoomModeration:
        """Apply `change` to the state as stored, unless another write came first (then again)."""
        for _ in range(_UPSERT_ATTEMPTS):
            current = await self.get_moderation(room)
            changed = change(current)
            if changed is None:
                return current
            changed = changed.model_copy(update={"version": current.version + 1})
            doc = {"_id": room, **changed.model_dump(mode="json", exclude={"room"})}
            if current.version == 0:
                try:
                    await self._moderation.insert_one(doc)
                except DuplicateKeyError:
                    continue
                except PyMongoError as exc:
                    raise _unavailable("moderate", exc) from exc
                return changed
            result = await self._call(
                "moderate",
                self._moderation.replace_one({"_id": room, "version": current.version}, doc),
            )
            if result.matched_count == 1:
                return changed
        raise StoreUnavailableError("mongo moderate failed: the room's state did not settle")

    async def claim_owner(self, room: str, owner: RoomOwner) -> RoomModeration:
        return await self._moderate(room, lambda state: owned(state, owner))

    async def add_sanction(
        self, room: str, kind: SanctionKind, sanction: Sanction, now: float
    ) -> RoomModeration:
        return await self._moderate(room, lambda state: sanctioned(state, kind, sanction, now))

    async def lift_sanction(self, room: str, kind: SanctionKind, key: str) -> RoomModeration:
        return await self._moderate(room, lambda state: lifted(state, kind, key))


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


def _fresh(
    messages: list[ChatMessage], new_keys: list[tuple[str, str]], lost: list[tuple[str, str]]
) -> list[bool]:
    """Which inputs this call stored: the first of each new key, unless the insert found it."""
    stored = set(new_keys) - set(lost)
    fresh = []
    for message in messages:
        key = (message.room, message.id)
        fresh.append(key in stored)
        stored.discard(key)
    return fresh


def _document(message: ChatMessage, author: str | None, seq: int) -> Document:
    """A message as stored: its wire fields, its author and its stored order."""
    doc: Document = message.model_dump(exclude_none=True)
    if message.reactions is not None:
        doc["reactions"] = _reactions_doc(message.reactions)
    if author:
        doc["author"] = author
    doc["seq"] = seq
    return doc


def _reactions_doc(reactions: dict[str, list[str]]) -> list[Document]:
    return [{"emoji": emoji, "users": users} for emoji, users in reactions.items()]


def _message(doc: Document) -> ChatMessage:
    """The message of a stored document (its `_id`, `seq` and `author` are left behind)."""
    fields = {k: v for k, v in doc.items() if k not in ("_id", "seq", "author")}
    reactions = fields.get("reactions")
    if isinstance(reactions, list):
        fields["reactions"] = {r["emoji"]: r["users"] for r in reactions} or None
    return ChatMessage.model_validate(fields)


def _change_update(message: ChatMessage) -> Document:
    """The update that writes a changed message's changing fields (unset when None)."""
    values = message.model_dump()
    sets: Document = {}
    unsets: Document = {}
    for name in _CHANGING:
        value = values[name]
        if value is None:
            unsets[name] = ""
        else:
            sets[name] = _reactions_doc(value) if name == "reactions" else value
    return {"$set": sets, "$unset": unsets} if unsets else {"$set": sets}


def _reservation(doc: Document) -> NameReservation:
    return NameReservation(
        key=str(doc["_id"]),
        username=str(doc["username"]),
        session_hash=str(doc["session_hash"]),
        expires=float(doc["expires"]),
    )


def _room_from_doc(doc: Document) -> PrivateRoom:
    first, second = (RoomMember(m["username"], m["session_hash"]) for m in doc["members"])
    return PrivateRoom(room=str(doc["_id"]), members=(first, second))

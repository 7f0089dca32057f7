"""What services ask each other over the bus: typed requests, and replies that are either a
result or a protocol error (`{"result": ...}` / `{"error": {"code", "message"}}`).

A refusal travels as a `ProtocolError` (roomcast.shared.errors) and reaches the client
unchanged; a bus timeout becomes `unavailable`.

Every request carries its caller's deadline (`DEADLINE_HEADER`, wall-clock seconds): the
broker's expiry only drops a request at the head of its queue, not one already delivered and
waiting in a busy consumer, so a consumer checks `expired` before doing the work. This assumes
the hosts' clocks agree to well within a request timeout (NTP).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from roomcast.shared.bus import Bus, Message, RejectMessage
from roomcast.shared.errors import ProtocolError
from roomcast.shared.models import ChatMessage

# The name services raised before the error types were one; the same class.
RemoteError = ProtocolError


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # what the service that answers with this model takes besides (`result` puts each beside
    # the result, where a caller of an older version does not look): how callers learn
    ADVERTISES: ClassVar[tuple[str, ...]] = ()


# presence.* ----------------------------------------------------------------------------------
class JoinRequest(Wire):
    gateway: str
    conn: str
    username: str
    room: str
    session_hash: str


MAX_JOIN_BATCH = 128  # joins in one `presence.joins` request at most
BATCHES = "batches"  # in a single join's result: this presence takes `presence.joins` too


class BatchedJoin(JoinRequest):
    """One join of a `JoinBatch`, with its own caller's deadline (wall-clock seconds)."""

    deadline: float


class JoinBatch(Wire):
    """`presence.joins`: the joins one gateway issued within a tick, or while its previous
    batch was in flight. Presence judges them in order, as that many `join` requests, and
    answers once: a list with one entry per join, each `{"result": ...}` as a `join` would
    get, or `{"error": ...}` with that join's own code (see `outcomes`)."""

    joins: list[BatchedJoin] = Field(min_length=1, max_length=MAX_JOIN_BATCH)


class LeaveRequest(Wire):
    gateway: str
    conn: str
    room: str
    # who left: a presence replica that took over after the join never knew the connection,
    # and still owes the room its `userLeave`
    username: str | None = None


class DisconnectRequest(Wire):
    gateway: str
    conn: str
    # as for LeaveRequest: the rooms presence had admitted it to, and whose name it held
    username: str | None = None
    session_hash: str | None = None
    rooms: list[str] = []


class InviteRequest(Wire):
    gateway: str
    conn: str
    username: str
    session_hash: str
    username2: str
    room: str


class UsersRequest(Wire):
    room: str
    username: str | None = None
    session_hash: str | None = None
    backend: bool = False  # the application's backend (API key): any room, private ones too


class UsersReply(Wire):
    private: bool
    allowed: bool
    users: list[str]


class RosterEntry(Wire):
    conn: str
    username: str
    session_hash: str
    rooms: list[str]


class Heartbeat(Wire):
    gateway: str
    connections: list[RosterEntry]


class GatewayGone(Wire):
    gateway: str


# history.<room> ------------------------------------------------------------------------------
MAX_READ_STATE_BATCH = 128  # readers in one `read_states` query at most


class Reader(Wire):
    """One reader of a `read_states` query: whose read state in which room."""

    room: str
    reader: str
    username: str | None = None


class HistoryQuery(Wire):
    """`recent`: the newest `limit`; `since`: after an id (recovery); `before`: a page back;
    `lookup`: the stored message with id `id`, if any (judging a client's id); `read_state`:
    no messages, only the `reader`'s read state (a join whose history the gateway has);
    `read_states`: that for each of `readers`, of any rooms (a gateway's joins of one turn),
    answered with a `ReadStates`. History's one queue answers it after every write published
    before it, whatever room its routing key names."""

    op: Literal["recent", "since", "since_rev", "before", "lookup", "read_state", "read_states"]
    limit: int
    since: str | None = None
    since_rev: int | None = None
    before: str | None = None
    id: str | None = None
    reader: str | None = None  # with recent/since/since_rev/read_state: its read state
    username: str | None = None  # the reader's username (its own messages are never unread)
    readers: list[Reader] | None = Field(default=None, max_length=MAX_READ_STATE_BATCH)


class ReadState(Wire):
    """One entry of a `ReadStates`: a reader's read state, or why history could not tell."""

    last_read: str | None = None
    unread: int | None = None
    error: str | None = None  # an error code (`unavailable`): this reader has no answer


class ReadStates(Wire):
    """The answer to `read_states`: one entry per reader, in order."""

    states: list[ReadState]


class HistoryReply(Wire):
    ADVERTISES = (BATCHES,)  # a history that answers this takes `read_states` too

    messages: list[ChatMessage]
    recovered: bool | None = None
    known: bool = True
    last_read: str | None = None
    unread: int | None = None
    # since_rev: `messages` are in rev order, so the last is not the room's newest; this is
    newest: str | None = None


class ChangeRequest(Wire):
    """A change to a stored message (2.3), judged and applied by history in queue order."""

    op: Literal["edit", "delete", "react", "markRead"]
    id: str
    author: str  # the requester's identity (session hash)
    username: str
    rev: int  # the gateway's proposal
    at: int  # ms
    body: str | None = None
    emoji: str | None = None
    add: bool | None = None
    moderator: bool = False


# A query and a change share the `history.<room>` key, so they share the ordered queue: a change
# lands after every message published before it. They are told apart by `op`.
HistoryRequest = Annotated[HistoryQuery | ChangeRequest, Field(discriminator="op")]
_HISTORY_REQUEST: TypeAdapter[HistoryQuery | ChangeRequest] = TypeAdapter(HistoryRequest)


M = TypeVar("M", bound=BaseModel)


# helpers -------------------------------------------------------------------------------------
def encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def decode(model: type[M], message: Message) -> M:
    """Parse a request; a malformed one can never succeed, so it is rejected, not requeued."""
    try:
        return model.model_validate_json(message.body)
    except ValueError as exc:
        raise RejectMessage(f"malformed {model.__name__}: {exc}") from exc


def decode_history(message: Message) -> HistoryQuery | ChangeRequest:
    """Parse a `history.<room>` request, a query or a change by its `op`; a malformed one is
    rejected, not requeued."""
    try:
        return _HISTORY_REQUEST.validate_json(message.body)
    except ValueError as exc:
        raise RejectMessage(f"malformed history request: {exc}") from exc


def encode_raw(value: dict[str, Any]) -> bytes:
    """A request built as plain data where a model would cost too much (the heartbeat roster of
    thousands of connections, every beat); the receiver still validates it."""
    return orjson.dumps(value)


def result(value: BaseModel | dict[str, Any] | None = None) -> bytes:
    if isinstance(value, Wire):
        reply: dict[str, Any] = {"result": value.model_dump(mode="json")}
        reply.update((flag, True) for flag in value.ADVERTISES)
        return orjson.dumps(reply)
    payload = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return orjson.dumps({"result": payload})


def refusal(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def outcome_of(error: ProtocolError | None, value: Any = None) -> dict[str, Any]:
    """One entry of a batched reply: a result, or a refusal (`outcomes` reads them back)."""
    if error is None:
        return {"result": value}
    return {"error": {"code": error.code, "message": error.message}}


def result_of(raw: bytes) -> Any:
    """A reply's result; a refusal raises its `ProtocolError`."""
    reply = orjson.loads(raw)
    if "error" in reply:
        error = reply["error"]
        raise ProtocolError.from_wire(error.get("code"), error.get("message"))
    return reply.get("result")


def outcomes(raw: bytes, count: int) -> list[Any]:
    """The entries of a batched reply, each a result or the `ProtocolError` it carries; a
    refusal of the whole batch, or a reply of the wrong length, raises `ProtocolError`."""
    reply = orjson.loads(raw)
    if "error" in reply:
        error = reply["error"]
        raise ProtocolError.from_wire(error.get("code"), error.get("message"))
    entries = reply.get("result")
    if not isinstance(entries, list) or len(entries) != count:
        raise ProtocolError("internal", f"a batched reply of {count} entries expected")
    answers: list[Any] = []
    for entry in entries:
        error = entry.get("error") if isinstance(entry, dict) else None
        if error is not None:
            answers.append(ProtocolError.from_wire(error.get("code"), error.get("message")))
        else:
            answers.append(entry.get("result") if isinstance(entry, dict) else None)
    return answers


DEADLINE_HEADER = "deadline"


def expired(message: Message, margin: float = 0.0, wall: Callable[[], float] = time.time) -> bool:
    """Whether the caller has given up on `message` (or will have within `margin` seconds, too
    soon for a reply to reach it); False for a message that carries no deadline."""
    raw = message.headers.get(DEADLINE_HEADER)
    if raw is None:
        return False
    try:
        deadline = float(raw)
    except ValueError:
        return False
    return wall() + margin >= deadline


class Reply(NamedTuple):
    """A request's result, and what the service that answered advertised (`Wire.ADVERTISES`)."""

    result: Any
    advertised: frozenset[str]


async def call_reply(
    bus: Bus,
    routing_key: str,
    request: BaseModel,
    *,
    timeout: float,
    wall: Callable[[], float] = time.time,
) -> Reply:
    """Send a request and return its reply, raising `ProtocolError` for a refusal."""
    deadline = {DEADLINE_HEADER: f"{wall() + timeout:.3f}"}
    raw = await bus.request(routing_key, encode(request), timeout=timeout, headers=deadline)
    reply = orjson.loads(raw)
    if "error" in reply:
        error = reply["error"]
        raise ProtocolError.from_wire(error.get("code"), error.get("message"))
    advertised = frozenset(k for k, v in reply.items() if k != "result" and v is True)
    return Reply(reply.get("result"), advertised)


async def call(
    bus: Bus,
    routing_key: str,
    request: BaseModel,
    *,
    timeout: float,
    wall: Callable[[], float] = time.time,
) -> Any:
    """Send a request and return its result, raising `ProtocolError` for a refusal."""
    return (await call_reply(bus, routing_key, request, timeout=timeout, wall=wall)).result

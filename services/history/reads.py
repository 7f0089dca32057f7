"""History reads: the answers to `HistoryQuery`, one small function per op.

Every read returns messages in their current state (tombstones included, so pages keep their
places). `recent`, `since` and `since_rev` also carry a reader's read state when the query
names the reader; `read_state` carries only that, and `read_states` that of many readers (a
gateway's joins of one turn: one request, delivery, ack and reply instead of one each).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from roomcast.shared import rpc
from roomcast.shared.config import Settings
from roomcast.shared.store.base import MessageStore, StoreUnavailableError

Read = Callable[[MessageStore, Settings, str, rpc.HistoryQuery, int], Awaitable[rpc.HistoryReply]]

WITH_READ_STATE = frozenset({"recent", "since", "since_rev", "read_state"})


async def _recent(
    store: MessageStore, settings: Settings, room: str, query: rpc.HistoryQuery, limit: int
) -> rpc.HistoryReply:
    return rpc.HistoryReply(messages=await store.newest(room, limit))


async def _since(
    store: MessageStore, settings: Settings, room: str, query: rpc.HistoryQuery, limit: int
) -> rpc.HistoryReply:
    """Recovery after an id: everything after it when that fits; else the newest `limit` (the
    id is known) or the default page (it is not), with `recovered` False."""
    if query.since is None:
        return await _recent(store, settings, room, query, limit)
    after = await store.after(room, query.since, limit + 1)
    if after is not None and len(after) <= limit:
        return rpc.HistoryReply(messages=after, recovered=True)
    newest = limit if after is not None else settings.history_default
    return rpc.HistoryReply(messages=await store.newest(room, newest), recovered=False)


async def _since_rev(
    store: MessageStore, settings: Settings, room: str, query: rpc.HistoryQuery, limit: int
) -> rpc.HistoryReply:
    """Every message changed after a rev, in rev order, when they fit; else, as for `since`,
    the newest `limit` with `recovered` False (the client starts its view afresh)."""
    if query.since_rev is None:
        return await _recent(store, settings, room, query, limit)
    changed = await store.since_rev(room, query.since_rev, limit + 1)
    if len(changed) <= limit:
        newest = await store.newest(room, 1)
        return rpc.HistoryReply(
            messages=changed, recovered=True, newest=newest[0].id if newest else None
        )
    return rpc.HistoryReply(messages=await store.newest(room, limit), recovered=False)


async def _before(
    store: MessageStore, settings: Settings, room: str, query: rpc.HistoryQuery, limit: int
) -> rpc.HistoryReply:
    before = await store.before(room, query.before, limit)
    if before is None:
        return rpc.HistoryReply(messages=[], known=False)
    return rpc.HistoryReply(messages=before)


async def _lookup(
    store: MessageStore, settings: Settings, room: str, query: rpc.HistoryQuery, limit: int
) -> rpc.HistoryReply:
    found = await store.get(room, query.id) if query.id is not None else None
    return rpc.HistoryReply(messages=[found] if found is not None else [])


async def _read_state(
    store: MessageStore, settings: Settings, room: str, query: rpc.HistoryQuery, limit: int
) -> rpc.HistoryReply:
    """No messages: the read state is all that is asked (added below)."""
    return rpc.HistoryReply(messages=[])


READS: dict[str, Read] = {
    "recent": _recent,
    "since": _since,
    "since_rev": _since_rev,
    "before": _before,
    "lookup": _lookup,
    "read_state": _read_state,
}  # and `read_states`, whose answer is not a `HistoryReply` (`answer`)


async def _read_states(store: MessageStore, readers: list[rpc.Reader]) -> rpc.ReadStates:
    """Each reader's read state; one the store cannot tell is `unavailable` alone."""
    states: list[rpc.ReadState] = []
    for one in readers:
        try:
            state = await store.read_state(one.room, one.reader, one.username)
        except StoreUnavailableError:
            states.append(rpc.ReadState(error="unavailable"))
        else:
            states.append(rpc.ReadState(last_read=state.last_read, unread=state.unread))
    return rpc.ReadStates(states=states)


async def answer(
    store: MessageStore, settings: Settings, room: str, query: rpc.HistoryQuery
) -> rpc.HistoryReply | rpc.ReadStates:
    """The reply to a query; raises `StoreUnavailableError` when the store does not answer."""
    if query.op == "read_states":
        return await _read_states(store, query.readers or [])
    reply = await READS[query.op](store, settings, room, query, max(1, query.limit))
    if query.reader is None or query.op not in WITH_READ_STATE:
        return reply
    state = await store.read_state(room, query.reader, query.username)
    return reply.model_copy(update={"last_read": state.last_read, "unread": state.unread})

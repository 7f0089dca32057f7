"""Names kept for their owners (PROTOCOL.md 2.2): after a user's last connection closes (or
its gateway dies), the name's key stays reserved for that session for the grace period, so
nobody can squat it while the real user's page reconnects.

Presence's active replica is the only writer, so what it reserved it knows: reservations go
into a bounded LRU cache at once, and a writer task persists them through the room store in
the order they were made (a store outage delays them, and the newest per key wins). What the
cache lacks is read from the store: a replica that takes over (or restarts) sees what the
previous one reserved. Reads that fail let the join through, logged: the store being down
must not stop the chat, and the live-name check still holds.

A name a token subject used (2.4) is kept for that subject for `SUBJECT_HOLD_SECONDS` after its
last connection, whatever the grace period: no anonymous user can take a signed-in user's name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from prometheus_client import Counter

from roomcast.shared.auth import is_subject_key
from roomcast.shared.store.base import NameReservation, RoomStore, StoreUnavailableError

from .readahead import ReadAhead

log = structlog.get_logger(__name__)

RESERVATIONS = Counter(
    "roomcast_presence_name_reservations_total",
    "Name reservations, by outcome (made, refused_join, lost: not persisted, unchecked: store down)",
    ["outcome"],
)

CACHE_CAP = 10_000
PENDING_CAP = 10_000
RETRY_SECONDS = 1.0
SUBJECT_HOLD_SECONDS = 365 * 86400.0  # a signed-in user's name, after its last connection


def refusal(reservation: NameReservation) -> str:
    """Why a join under a reserved name is refused, in the client's words."""
    if is_subject_key(reservation.session_hash):
        return f"username {reservation.username!r} belongs to a signed-in user"
    return (
        f"username {reservation.username!r} is kept for the user who had it until they come "
        "back (or for a few minutes)"
    )


class NameReservations:
    def __init__(
        self,
        store: RoomStore,
        grace: float,
        wall: Callable[[], float],
        *,
        cache_cap: int = CACHE_CAP,
        pending_cap: int = PENDING_CAP,
    ) -> None:
        self._store = store
        self._grace = grace
        self._wall = wall
        self._cache: ReadAhead[str, NameReservation | None] = ReadAhead(cache_cap, self._read)
        self._pending: dict[str, NameReservation] = {}  # not yet persisted, oldest first
        self._written: dict[str, asyncio.Future[None]] = {}  # key -> resolved once persisted
        self._pending_cap = pending_cap
        self._wake = asyncio.Event()
        self.on_round: Callable[[], None] = lambda: None

    async def holder(self, key: str) -> NameReservation | None:
        """The reservation in force for `key`, if any."""
        try:
            cached = await self._cache.get(key)
        except StoreUnavailableError as exc:
            RESERVATIONS.labels("unchecked").inc()
            log.warning("name reservations unreadable; join let through", error=str(exc))
            return None
        return cached if cached is not None and cached.holds(self._wall()) else None

    def prefetch(self, key: str) -> None:
        """Read `key`'s reservation ahead, outside presence's lock (readahead.py)."""
        self._cache.prefetch(key)

    async def _read(self, key: str) -> NameReservation | None:
        return await self._store.get_reservation(key, self._wall())

    def reserve(self, key: str, username: str, session_hash: str) -> None:
        """Keep the name for its session from now on, for the grace period (a token subject's:
        for `SUBJECT_HOLD_SECONDS`)."""
        hold = SUBJECT_HOLD_SECONDS if is_subject_key(session_hash) else self._grace
        if hold <= 0:
            return
        reservation = NameReservation(key, username, session_hash, self._wall() + hold)
        self._cache.put(key, reservation)
        self._pending.pop(key, None)
        self._pending[key] = reservation
        while len(self._pending) > self._pending_cap:
            lost = next(iter(self._pending))
            del self._pending[lost]
            self._settle(lost)
            RESERVATIONS.labels("lost").inc()
            log.warning("name reservation not persisted: too many waiting", username=username)
        RESERVATIONS.labels("made").inc()
        self._wake.set()

    def written(self, key: str) -> asyncio.Future[None] | None:
        """A future that resolves once the name's reservation is persisted (or given up); None
        when nothing is waiting. A request that released the name is acknowledged only then:
        a replica killed before leaves the request to the next one, which reserves again."""
        if key not in self._pending:
            return None
        written = self._written.get(key)
        if written is None:
            written = self._written[key] = asyncio.get_running_loop().create_future()
        return written

    def _settle(self, key: str) -> None:
        written = self._written.pop(key, None)
        if written is not None and not written.done():
            written.set_result(None)

    def forget_cache(self) -> None:
        """Another replica may have been active meanwhile: read the store again."""
        self._cache.clear()

    async def purge(self) -> int:
        """Drop ended reservations from the store (the cache ignores ended ones by itself)."""
        return await self._store.purge_reservations(self._wall())

    async def run(self) -> None:
        """Persist reservations in the order they were made, for ever; supervised."""
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            key, reservation = next(iter(self._pending.items()))
            try:
                await self._store.reserve_name(reservation)
            except StoreUnavailableError as exc:
                log.warning("name reservation not persisted yet; retrying", error=str(exc))
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if self._pending.get(key) is reservation:
                del self._pending[key]
                self._settle(key)
            self.on_round()

    @property
    def waiting(self) -> int:
        return len(self._pending)

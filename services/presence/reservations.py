"""Names kept for their owners (PROTOCOL.md 2.2): after a user's last connection closes (or
its gateway dies), the name's key stays reserved for that session for the grace period, so
nobody can squat it while the real user's page reconnects.

Presence's active replica is the only writer of reservations (`reserve`, persisted by `run`),
so what it loaded when it became active plus what it wrote since is every reservation in force:
`take_over` loads them in one store query (`RoomStore.reservations`), and a fresh name needs no
read after that. A join that comes while the load is in flight waits for it.

A replica that could not load (the store down at takeover, or more reservations in force than
`load_cap`) reads the store per name as before, through a bounded read-ahead cache, and retries
the load until it succeeds. The load is repeated now and then (`refresh`): a replica that lost
its turn may still persist reservations it made before (its writer retries through a store
outage), and the next load sees them. Reads that fail let the join through, logged: the store
being down must not stop the chat, and the live-name check still holds.

Reservations are persisted in the order they were made (a store outage delays them, and the
newest per key wins).

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
LOADS = Counter(
    "roomcast_presence_reservation_loads_total",
    "Loads of every reservation in force, by outcome (loaded, failed, too_many)",
    ["outcome"],
)

CACHE_CAP = 10_000
LOAD_CAP = 50_000  # reservations held in memory at most; beyond, names are read one by one
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
        load_cap: int = LOAD_CAP,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._store = store
        self._grace = grace
        self._wall = wall
        self._cache: ReadAhead[str, NameReservation | None] = ReadAhead(cache_cap, self._read)
        self._pending: dict[str, NameReservation] = {}  # not yet persisted, oldest first
        self._written: dict[str, asyncio.Future[None]] = {}  # key -> resolved once persisted
        self._pending_cap = pending_cap
        self._load_cap = load_cap
        self._retry_seconds = retry_seconds
        # every reservation in force (some ended too) once loaded; None: read names one by one
        self._known: dict[str, NameReservation] | None = None
        self._loading: asyncio.Task[None] | None = None
        self._attempt: asyncio.Future[None] | None = None  # the load's query in flight
        self._since_load: dict[str, NameReservation] = {}  # ours, made while a load ran
        self._took_over = False
        self._wake = asyncio.Event()
        self.on_round: Callable[[], None] = lambda: None

    @property
    def loaded(self) -> bool:
        """Whether every reservation in force is in memory (no read per name)."""
        return self._known is not None

    async def holder(self, key: str) -> NameReservation | None:
        """The reservation in force for `key`, if any."""
        attempt = self._attempt
        if self._known is None and attempt is not None and not attempt.done():
            await asyncio.shield(attempt)  # one query answers every name: wait for it
        if self._known is not None:
            found = self._known.get(key)
        else:
            try:
                found = await self._cache.get(key)
            except StoreUnavailableError as exc:
                RESERVATIONS.labels("unchecked").inc()
                log.warning("name reservations unreadable; join let through", error=str(exc))
                return None
        return found if found is not None and found.holds(self._wall()) else None

    def prefetch(self, key: str) -> None:
        """Read `key`'s reservation ahead, outside presence's lock (readahead.py), unless
        every reservation is loaded or a load's query is in flight."""
        attempt = self._attempt
        if self._known is None and (attempt is None or attempt.done()):
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
        self._remember(reservation)
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

    def _remember(self, reservation: NameReservation) -> None:
        if self._loading is not None:
            self._since_load[reservation.key] = reservation
        known = self._known
        if known is None:
            return
        known[reservation.key] = reservation
        if len(known) > self._load_cap:
            now = self._wall()
            for ended in [k for k, r in known.items() if not r.holds(now)]:
                del known[ended]
        if len(known) > self._load_cap:
            LOADS.labels("too_many").inc()
            log.warning("too many name reservations to hold; reading names one by one")
            self._known = None  # `refresh` loads them again once fewer are in force

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

    # loads --------------------------------------------------------------------------------
    def take_over(self) -> None:
        """This replica became active (another one may have been active meanwhile): forget
        what it knew, and load every reservation in force."""
        self._took_over = True
        self._cache.clear()
        self._known = None
        self._start_load()

    def refresh(self) -> None:
        """Load again, keeping what is known meanwhile (see the module docstring); a no-op for
        a replica that was never active."""
        if self._took_over and self._loading is None:
            self._start_load()

    def _start_load(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        self._since_load = dict(self._pending)  # may be persisted while the query runs
        # set now: the requests delivered before the query starts wait for it too
        self._attempt = asyncio.get_running_loop().create_future()
        self._loading = asyncio.create_task(self._load(self._attempt), name="presence-names-load")

    async def _load(self, attempt: asyncio.Future[None]) -> None:
        """Load until it succeeds; meanwhile, after a failed attempt, names are read one by one."""
        this = asyncio.current_task()
        try:
            while True:
                if attempt.done():
                    attempt = self._attempt = asyncio.get_running_loop().create_future()
                try:
                    found = await self._store.reservations(self._wall(), self._load_cap + 1)
                except StoreUnavailableError as exc:
                    LOADS.labels("failed").inc()
                    log.warning("name reservations not loaded; retrying", error=str(exc))
                    attempt.set_result(None)
                    await asyncio.sleep(self._retry_seconds)
                    continue
                if len(found) > self._load_cap:
                    LOADS.labels("too_many").inc()
                    log.warning("too many name reservations to hold; reading names one by one")
                    self._known = None
                else:
                    LOADS.labels("loaded").inc()
                    known = {r.key: r for r in found}
                    known.update(self._since_load)  # ours are newer than any other replica's
                    self._known = known
                return
        finally:
            if not attempt.done():
                attempt.set_result(None)
            if self._loading is this:
                self._loading = None
                self._since_load = {}

    def stop(self) -> None:
        """Cancel a load in flight (the service is stopping)."""
        if self._loading is not None:
            self._loading.cancel()

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

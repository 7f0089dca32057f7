"""The signing keys at `ROOMCAST_JWKS_URL`, cached by key id.

PyJWKClient fetches and parses the key set; what this module adds is what a gateway needs:

- A known `kid` is answered from memory, without a thread or a lock, also when the set is older
  than `lifespan` seconds: it is then fetched again in the background (no join waits for it).
- An unknown `kid` (a key rotation) waits for a fetch of the set, but never sooner than
  `cooldown` seconds after the previous attempt: a flood of tokens with made-up `kid`s costs
  the JWKS server one request per cooldown, not one per token. A failed fetch waits out the
  cooldown as well, and keys already known stay in use.
- Fetches run in a worker thread (PyJWKClient is blocking urllib), one at a time: callers that
  need the set while it is being fetched wait for that one fetch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from jwt import PyJWK, PyJWKClient, PyJWTError
from prometheus_client import Counter

log = structlog.get_logger(__name__)

FETCHES = Counter(
    "roomcast_gateway_jwks_fetches_total", "Fetches of the JWKS key set, by outcome", ["outcome"]
)

LIFESPAN = 300.0  # seconds a fetched key set is used before it is fetched again
COOLDOWN = 10.0  # seconds between two fetches that a token's unknown kid may cause


class KeyUnavailableError(Exception):
    """No key verifies this token: its `kid` is not in the set, or the set cannot be fetched.
    The message says which, in words for the client."""


class JwksKeys:
    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        lifespan: float = LIFESPAN,
        cooldown: float = COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The client's own cache and cooldown are off: this class keeps both, on the loop.
        self._client = PyJWKClient(url, cache_jwk_set=False, timeout=timeout, cooldown_duration=0)
        self._lifespan = lifespan
        self._cooldown = cooldown
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._fetching: asyncio.Task[None] | None = None

    async def key(self, kid: str) -> PyJWK:
        """The key with this id, fetching the set when it lacks the id (or is stale)."""
        now = self._clock()
        found = self._keys.get(kid)
        if found is not None:
            stale = self._fetched_at is None or now - self._fetched_at >= self._lifespan
            if stale and self._may_fetch(now):
                self._start()
            return found
        if self._may_fetch(now):
            await asyncio.shield(self._start())  # a caller that gives up leaves it to the others
        found = self._keys.get(kid)
        if found is not None:
            return found
        if self._fetched_at is None:
            raise KeyUnavailableError("the signing keys could not be fetched; try again later")
        raise KeyUnavailableError(f"no signing key has the token's key id (kid) {kid[:64]!r}")

    def _may_fetch(self, now: float) -> bool:
        return self._fetching is not None or (
            self._tried_at is None or now - self._tried_at >= self._cooldown
        )

    async def settled(self) -> None:
        """Return once no fetch is in flight."""
        if self._fetching is not None:
            await asyncio.shield(self._fetching)

    def _start(self) -> asyncio.Task[None]:
        """The fetch in flight, or a new one."""
        task = self._fetching
        if task is None:
            self._tried_at = self._clock()
            task = self._fetching = asyncio.create_task(self._download(), name="jwks-fetch")
            task.add_done_callback(self._fetched)
        return task

    def _fetched(self, task: asyncio.Task[None]) -> None:
        if self._fetching is task:
            self._fetching = None
        if not task.cancelled() and task.exception() is not None:  # nobody may await it
            log.error("JWKS fetch failed unexpectedly", exc_info=task.exception())

    async def _download(self) -> None:
        try:
            keys = await asyncio.to_thread(self._client.get_signing_keys, True)
        except (PyJWTError, ValueError) as exc:  # ValueError: a body that is not JSON
            FETCHES.labels("failed").inc()
            log.warning(
                "JWKS key set not fetched; known keys stay in use",
                reason=str(exc)[:200],
                known=len(self._keys),
                retry_after_seconds=self._cooldown,
            )
            return
        self._keys = {key.key_id: key for key in keys if key.key_id is not None}
        self._fetched_at = self._clock()
        FETCHES.labels("ok").inc()
        log.info("JWKS key set fetched", keys=len(self._keys))

"""The application's backend keys (PROTOCOL.md 2.4): `ROOMCAST_API_KEY`, one or more,
comma-separated, so a deployment rotates by adding the new key, moving its backend over, then
dropping the old one.

Every configured key is compared in constant time (`hmac.compare_digest`, against all of them,
whatever matched first), and each has its own token bucket: beyond it `rate_limited` (429).
With no key configured nothing matches, so the backend API is off.
"""

from __future__ import annotations

import hmac

from quart import current_app, request

from roomcast.shared.config import Settings
from roomcast.shared.errors import ProtocolError

from .ratelimit import TokenBucket

_EXTENSION = "roomcast.backend_keys"


class BackendKeys:
    """The configured keys and one request budget per key."""

    def __init__(self, keys: tuple[bytes, ...], rate: float, burst: int) -> None:
        self._keys = keys
        self._buckets = [TokenBucket(rate, burst) for _ in keys]

    @classmethod
    def of(cls, settings: Settings) -> BackendKeys:
        keys = tuple(key.get_secret_value().encode() for key in settings.api_key)
        return cls(keys, settings.api_rate_per_second, settings.api_burst)

    def match(self, header: str) -> int | None:
        """The index of the key an `Authorization: Bearer <key>` header carries, or None."""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        offered = given.strip().encode()
        found = None
        for i, key in enumerate(self._keys):
            if hmac.compare_digest(offered, key):
                found = i
        return found

    def spend(self, index: int) -> None:
        if not self._buckets[index].take():
            raise ProtocolError("rate_limited", "too many backend API requests for this key")


def install(extensions: dict[str, object], settings: Settings) -> None:
    """Keep the keys where requests find them (called by `create_app`)."""
    extensions[_EXTENSION] = BackendKeys.of(settings)


def backend_caller() -> bool:
    """Whether the current request carries an API key, spending one request of its budget
    (`rate_limited` past it)."""
    keys = current_app.extensions.get(_EXTENSION)
    if not isinstance(keys, BackendKeys):
        return False
    index = keys.match(request.headers.get("Authorization", ""))
    if index is None:
        return False
    keys.spend(index)
    return True

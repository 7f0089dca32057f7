"""The application's backend keys (PROTOCOL.md 2.4): `ROOMCAST_API_KEY`, one or more,
comma-separated, so a deployment rotates by adding the new key, moving its backend over, then
dropping the old one.

Every configured key is compared in constant time (`hmac.compare_digest`, against all of them,
whatever matched first), and each has its own token bucket: beyond it `rate_limited` (429).
With no key configured nothing matches, so the backend API is off.
"""

from __future__ import annotations

import hmac

import structlog
from quart import current_app, request

from roomcast.shared.config import Settings
from roomcast.shared.errors import ProtocolError

from .logthrottle import LogThrottle
from .ratelimit import TokenBucket

log = structlog.get_logger(__name__)

_EXTENSION = "roomcast.backend_keys"


class BackendKeys:
    """The configured keys and one request budget per key."""

    def __init__(self, keys: tuple[bytes, ...], rate: float, burst: int) -> None:
        self._keys = keys
        self._buckets = [TokenBucket(rate, burst) for _ in keys]
        self._refusals = LogThrottle(burst=5, window=10.0)  # a guessing client: sampled

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

    def refuse(self, header: str | None) -> ProtocolError:
        """The 401 of a request without a key, logged (a few lines per 10 s per reason)."""
        reason = "no Authorization header" if header is None else "not a key of ROOMCAST_API_KEY"
        left_out = self._refusals.allow(reason)
        if left_out is not None:
            log.warning(
                "backend API key refused", path=request.path, reason=reason, left_out=left_out
            )
        return ProtocolError(
            "unauthorized", f"the backend API needs 'Authorization: Bearer <API key>' ({reason})"
        )


def install(extensions: dict[str, object], settings: Settings) -> None:
    """Keep the keys where requests find them (called by `create_app`)."""
    extensions[_EXTENSION] = BackendKeys.of(settings)


def backend_caller() -> bool:
    """Whether the current request carries an API key, spending one request of its budget
    (`rate_limited` past it)."""
    index = _keys().match(request.headers.get("Authorization", ""))
    if index is None:
        return False
    _keys().spend(index)
    return True


def require_key() -> None:
    """Refuse the current request `unauthorized` unless it carries an API key."""
    if not backend_caller():
        raise _keys().refuse(request.headers.get("Authorization"))


def _keys() -> BackendKeys:
    keys: BackendKeys = current_app.extensions[_EXTENSION]
    return keys

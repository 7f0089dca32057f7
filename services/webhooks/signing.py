"""Webhook signatures: what roomcast puts on every POST, and the check a receiver makes.

The header is `Roomcast-Signature: t=<unix seconds>,v1=<hex>`, where the hex is
HMAC-SHA256(secret, "<t>.<raw body>"). Signing the timestamp with the body means a captured
POST cannot be replayed later with a fresh `t`: a receiver refuses a `t` further than its
tolerance from its own clock (`DEFAULT_TOLERANCE`, 5 minutes, both ways) and dedupes the
events' ids within that window. Each try is signed anew, so a retry after a long outage carries
a fresh timestamp. A header may carry several `v1` (one per secret while secrets rotate); one
match is enough.

Standard library only: receivers can copy this module as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable

HEADER = "Roomcast-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300.0  # seconds


class SignatureError(ValueError):
    """A webhook POST whose signature header is missing, malformed, stale or wrong."""


def signature(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of "<timestamp>.<body>"."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, *, now: float | None = None) -> str:
    """The value of the `Roomcast-Signature` header for `body`, sent now."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},{SCHEME}={signature(secret, timestamp, body)}"


def verify(
    header: str | None,
    body: bytes,
    secrets: str | bytes | Iterable[str | bytes],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> int:
    """Check a POST's signature header against its raw body; return its timestamp.

    `secrets`: the shared secret, or several while rotating. Raises `SignatureError` saying
    why when the header is absent or malformed, its timestamp is more than `tolerance`
    seconds away from now (a replay, or a clock far off), or no signature matches (a forged
    or altered body, or another secret)."""
    if not header:
        raise SignatureError(f"no {HEADER} header")
    timestamp, candidates = _parse(header)
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance:
        raise SignatureError(
            f"timestamp {timestamp} is {abs(clock - timestamp):.0f}s from now, beyond the "
            f"{tolerance:g}s tolerance (a replay?)"
        )
    keys = [secrets] if isinstance(secrets, str | bytes) else list(secrets)
    if not keys:
        raise SignatureError("no secret to verify with")
    expected = [signature(key, timestamp, body) for key in keys]
    # every pair is compared, in constant time, so timing says nothing about which one failed
    matches = [hmac.compare_digest(e, c) for e in expected for c in candidates]
    if not any(matches):
        raise SignatureError("signature does not match the body")
    return timestamp


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {HEADER} header: {item.strip()!r} has no '='")
        if name == "t":
            if not (value.isascii() and value.isdigit()) or timestamp is not None:
                raise SignatureError(f"malformed {HEADER} header: bad or repeated t")
            timestamp = int(value)
        elif name == SCHEME:
            candidates.append(value)
    if timestamp is None:
        raise SignatureError(f"malformed {HEADER} header: no t=<timestamp>")
    if not candidates:
        raise SignatureError(f"{HEADER} header has no {SCHEME} signature")
    return timestamp, candidates

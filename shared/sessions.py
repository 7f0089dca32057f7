"""Session strings: bearer secrets that any gateway of a deployment can verify.

A session is `v1.<username>.<nonce>.<mac>` (each part base64url): 128 random bits bound to the
username by an HMAC-SHA256 with the deployment's secret. Gateways verify it without shared
state; presence and the room store only ever see `session_hash`, never the session itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Mints and verifies sessions with one deployment secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._key = hashlib.sha256(b"roomcast-session|" + secret).digest()

    def _mac(self, username: str, nonce: bytes) -> bytes:
        msg = _VERSION.encode() + b"|" + username.encode() + b"|" + nonce
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def mint(self, username: str) -> str:
        """A new session for `username`."""
        nonce = secrets.token_bytes(16)
        user = _b64(username.encode())
        return f"{_VERSION}.{user}.{_b64(nonce)}.{_b64(self._mac(username, nonce))}"

    def username_of(self, session: str) -> str | None:
        """The username a valid session was minted for, or None for anything forged or garbled."""
        if not isinstance(session, str) or len(session) > 512:
            return None
        parts = session.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            return None
        try:
            username = _unb64(parts[1]).decode()
            nonce = _unb64(parts[2])
            mac = _unb64(parts[3])
        except (ValueError, UnicodeDecodeError):
            return None
        if len(nonce) != 16 or not hmac.compare_digest(mac, self._mac(username, nonce)):
            return None
        return username


def session_hash(session: str) -> str:
    """What the rest of the system stores and compares instead of the secret itself."""
    return hashlib.sha256(session.encode()).hexdigest()

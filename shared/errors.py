"""The protocol's error codes, and the one error type that carries them to a client.

A `ProtocolError` may start anywhere: the gateway refusing a frame, presence refusing a join,
history refusing a read. Services send it over the bus as `{"error": {"code", "message"}}`
(`roomcast.shared.rpc`), and the gateway writes it to the client unchanged: one type end to
end, so a code cannot be lost or retyped on the way.
"""

from __future__ import annotations

from typing import Literal, get_args

ErrorCode = Literal[
    "bad_json",
    "bad_frame",
    "bad_event",
    "invalid",
    "not_joined",
    "username_taken",
    "username_mismatch",
    "user_offline",
    "room_exists",
    "room_private",
    "rate_limited",
    "unavailable",
    "internal",
    "not_found",
    "forbidden",
    "muted",
    "banned",
    "unauthorized",
]

ERROR_CODES: frozenset[str] = frozenset(get_args(ErrorCode))


class ProtocolError(Exception):
    """A frame or request refused with one of the protocol's codes and a plain-words reason."""

    def __init__(self, code: ErrorCode, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.ref = ref

    @classmethod
    def from_wire(cls, code: object, message: object) -> ProtocolError:
        """Rebuild an error another service sent; a code this version does not know is an
        internal error rather than a made-up code sent on to a client."""
        text = str(message)
        if isinstance(code, str) and code in ERROR_CODES:
            return cls(code, text)  # type: ignore[arg-type]  # checked against ERROR_CODES
        return cls("internal", f"unexpected error from a service: {text}")

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r})"

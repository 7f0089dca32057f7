"""Server-to-client frames, encoded once: whoever emits an event (a gateway or presence) encodes
it here, and gateways write the same text to every socket of the room without decoding it."""

from __future__ import annotations

from typing import Any

import orjson


def encode_event(event: str, data: Any, *, room: str | None = None, ref: str | None = None) -> str:
    """The protocol envelope `{"event", "data"}` plus `room` and `ref` where they apply."""
    frame: dict[str, Any] = {"event": event}
    if room is not None:
        frame["room"] = room
    if ref is not None:
        frame["ref"] = ref
    frame["data"] = data
    return orjson.dumps(frame).decode()


def error_data(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}

"""aio-pika deliveries as the bus's `Message`: the one place that knows both shapes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from ..base import Message


def headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """AMQP header values as the short strings `Message.headers` promises."""
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (raw or {}).items()}


def to_message(incoming: AbstractIncomingMessage) -> Message:
    return Message(
        incoming.routing_key or "",
        incoming.body,
        headers(incoming.headers),
        incoming.reply_to,
        incoming.correlation_id,
    )

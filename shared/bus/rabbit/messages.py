"""Broker deliveries as the bus's `Message`: the one place that knows their shape (aiormq's
`DeliveredMessage`, which subscriptions and work consumers both take straight from aiormq's
channel, without aio-pika's `IncomingMessage`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiormq.abc import DeliveredMessage

from ..base import Message


def headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """AMQP header values as the short strings `Message.headers` promises."""
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (raw or {}).items()}


def from_delivered(delivered: DeliveredMessage) -> Message:
    """aiormq's delivery as a `Message`, without building aio-pika's `IncomingMessage` (a dozen
    properties decoded per delivery, none of which the bus reads)."""
    properties = delivered.header.properties
    return Message(
        delivered.routing_key or "",
        delivered.body,
        headers(properties.headers),
        properties.reply_to,
        properties.correlation_id,
    )

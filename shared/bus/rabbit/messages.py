"""Broker deliveries as the bus's `Message`: the one place that knows their shapes (aio-pika's
`IncomingMessage` for work queues, aiormq's `DeliveredMessage` for subscriptions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import DeliveredMessage

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


def from_delivered(delivered: DeliveredMessage) -> Message:
    """aiormq's delivery as a `Message`, without building aio-pika's `IncomingMessage` (a dozen
    properties decoded per delivery, none of which a subscription reads)."""
    properties = delivered.header.properties
    return Message(
        delivered.routing_key or "",
        delivered.body,
        headers(properties.headers),
        properties.reply_to,
        properties.correlation_id,
    )

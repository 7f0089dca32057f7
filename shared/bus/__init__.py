"""The bus seam (see `base`): one interface, an in-memory and a RabbitMQ implementation."""

from __future__ import annotations

from . import trace
from .base import (
    Bus,
    BusError,
    BusTimeoutError,
    BusUnavailableError,
    Consumer,
    GapHandler,
    Handler,
    LossHandler,
    Message,
    RejectMessage,
    Subscription,
    topic_matches,
)
from .memory import InMemoryBus

__all__ = [
    "Bus",
    "BusError",
    "BusTimeoutError",
    "BusUnavailableError",
    "Consumer",
    "GapHandler",
    "Handler",
    "InMemoryBus",
    "LossHandler",
    "Message",
    "RejectMessage",
    "Subscription",
    "topic_matches",
    "trace",
]

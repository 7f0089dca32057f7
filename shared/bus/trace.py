"""Per-stage timestamps of a room event on its way through the bus: where its latency goes.

A debug and bench facility, off unless `ROOMCAST_TRACE_STAGES` is set (read once, at import),
and free when off: nothing is stamped and the subscriptions hand deliveries over untouched.
When on, the publisher stamps `Header.TRACE_RECEIVED` (the gateway took the client's frame) and
the bus `Header.TRACE_PUBLISHED` (handed to the broker client); a RabbitMQ subscription adds
`Header.TRACE_DELIVERED` as the broker client hands it a delivery, and its handler is timed (the
in-memory bus has no broker hop to trace).
Each delivery then adds one observation per stage to `roomcast_stage_seconds{stage}`:

- `handle`: received → published (the gateway's frame handling and the publish task's start);
- `broker`: published → delivered (the client's writer, RabbitMQ, the client's reader);
- `inbox`: delivered → handed to the handler (the subscription's inbox hand-off);
- `relay`: the handler's run (the event queued on every local socket);
- `gateway`: received → relayed, the sum;
- `confirm`: published → the publisher confirm (on the publishing side: never on the path of a
  delivery, only of the sender's ack).

Timestamps are wall-clock nanoseconds (`time.time_ns`), so stages that cross processes on one
machine (or hosts with synchronised clocks) compare; `roomcast bench` reports the percentiles
when it runs with the variable set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from prometheus_client import Histogram

from roomcast.shared.topics import Header

from .base import Handler, Message


def enabled(raw: str | None) -> bool:
    """Whether a value of ROOMCAST_TRACE_STAGES turns tracing on."""
    return (raw or "").strip().lower() in ("1", "true", "yes", "on")


ENABLED = enabled(os.environ.get("ROOMCAST_TRACE_STAGES"))

STAGES = ("handle", "broker", "inbox", "relay", "gateway", "confirm")

# about 25 % apart from 50 µs to 50 ms, then coarser: p50s of a few ms must be told apart
_BUCKETS = (
    *(x / 1e6 for x in (50, 75, 100, 150, 200, 250, 300, 400, 500, 650, 800)),
    *(x / 1e3 for x in (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6.5, 8, 10, 12.5, 15, 20, 25, 35, 50)),
    0.1,
    0.25,
    0.5,
    1.0,
)
STAGE_SECONDS = Histogram(
    "roomcast_stage_seconds",
    "Time a room event spent in each stage of the bus (ROOMCAST_TRACE_STAGES only)",
    ["stage"],
    buckets=_BUCKETS,
)
_observe = {stage: STAGE_SECONDS.labels(stage).observe for stage in STAGES}


def now() -> str:
    """A timestamp for a trace header."""
    return str(time.time_ns())


def _ns(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:  # from another publisher: never fail a delivery over a trace header
        return None


def _stage(stage: str, start: int | None, end: int | None) -> None:
    if start is not None and end is not None:
        _observe[stage](max(0, end - start) / 1e9)


def stamp_published(headers: dict[str, str]) -> int | None:
    """Stamp the hand-off to the broker on a traced publish; returns its time, or None."""
    if Header.TRACE_RECEIVED not in headers:
        return None
    published = time.time_ns()
    headers[Header.TRACE_PUBLISHED] = str(published)
    return published


def confirmed(published: int) -> None:
    """The broker confirmed a traced publish."""
    _stage("confirm", published, time.time_ns())


def delivered(message: Message) -> Message:
    """The same delivery, with the time the broker client handed it over."""
    headers = dict(message.headers)
    headers[Header.TRACE_DELIVERED] = now()
    return Message(
        message.routing_key, message.body, headers, message.reply_to, message.correlation_id
    )


def timed(handler: Handler) -> Handler:
    """`handler`, recording the stages of every traced delivery it gets."""

    async def traced(message: Message) -> None:
        handed = time.time_ns()
        await handler(message)
        headers = message.headers
        received = _ns(headers, Header.TRACE_RECEIVED)
        if received is None:
            return
        relayed = time.time_ns()
        published = _ns(headers, Header.TRACE_PUBLISHED)
        arrived = _ns(headers, Header.TRACE_DELIVERED)
        _stage("handle", received, published)
        _stage("broker", published, arrived)
        _stage("inbox", arrived, handed)
        _stage("relay", handed, relayed)
        _stage("gateway", received, relayed)

    return traced

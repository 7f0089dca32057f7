"""The bus seam: everything the services need from a message broker, and nothing else.

Every service talks to the others only through a `Bus`. Two implementations exist:
`InMemoryBus` (one process: `roomcast dev` and unit tests) and `RabbitBus` (RabbitMQ through
aio-pika). Both pass the same contract tests (tests/contract), and the services never know which
one they run on.

The model is RabbitMQ's: one topic exchange, routing keys made of dot-separated words, patterns
where `*` matches exactly one word and `#` matches zero or more.

Guarantees:
- `publish` returns once the broker has taken responsibility for the message (a publisher
  confirm). A persistent message routed to a durable work queue survives a broker restart. On
  the in-memory bus there is no disk: a persistent publish returns once every work queue it was
  routed to has *processed* it (its handler returned), which is what "safely handed on" means in
  one process. A publish that cannot be confirmed raises `BusUnavailableError`, never passes
  silently.
- A `Subscription` is a private, transient queue: at-most-once broadcast delivery of whatever
  matches its bindings while it is bound. It dies with its owner. Order is preserved per
  publisher. Its handler runs for one message at a time; a handler exception drops that message
  only.
- Losses are never silent. Deliveries to a subscription may be lost (1) while the broker
  connection is down: RabbitMQ deletes the exclusive queue with the connection, and what is
  published until it is declared again reaches nobody; (2) when the subscription's inbox is
  full: it holds at most `inbox_limit` messages (default 100,000) waiting for the handler, and
  drops what comes beyond (counted in `roomcast_bus_inbox_dropped_total`). After either, the
  subscription's `on_gap` is called, in a task of its own: (1) once the queue, *all* its
  bindings and its consumer are back, so whatever is published from then on is delivered;
  (2) once the inbox is back to half its limit. Calls to one subscription's `on_gap` never
  overlap, and each gap is followed by a call that starts after it. Its owner repairs there
  (re-reads what it may have missed). Its exceptions are logged.
- Where a gap began is reported too: `on_loss`, if given, is called synchronously between two
  deliveries to the handler, at the point where losses may have begun (the connection dropped,
  or the first delivery was dropped from a full inbox): everything handed over before it came
  before the loss. A repair must start from there, not from whatever the handler saw last by
  the time `on_gap` runs (deliveries published after the gap may reach the handler first).
  Every `on_gap` call comes after the `on_loss` call of each gap it reports.
- A work queue (`consume`) is durable and shared: each message goes to one consumer, at least
  once. It is acknowledged after the handler returns; a handler that raises `RejectMessage`
  drops it; any other exception requeues it. With `single_active=True` only one consumer
  receives messages at a time and the next takes over when it goes away, so the queue's FIFO
  order is the processing order.
- `request` publishes with a private reply address and waits for exactly one `reply`; after
  `timeout` seconds it raises `BusTimeoutError` and a late reply is dropped. Requests carry an
  expiry, so one that nobody took in time is not processed later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class BusError(Exception):
    """Base of every error the bus raises."""


class BusUnavailableError(BusError):
    """The broker could not take or confirm an operation."""


class BusTimeoutError(BusUnavailableError):
    """A request got no reply in time."""


class RejectMessage(Exception):
    """Raised by a work-queue handler to drop a message that can never be processed."""


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery. `headers` are short strings the receiver routes on without decoding."""

    routing_key: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    reply_to: str | None = None
    correlation_id: str | None = None


Handler = Callable[[Message], Awaitable[None]]
GapHandler = Callable[[], Awaitable[None]]
"""Called when deliveries to a subscription may have been lost (see the module docstring)."""
LossHandler = Callable[[], None]
"""Called, in delivery order, where deliveries may have begun to be lost (module docstring)."""


@runtime_checkable
class Subscription(Protocol):
    """A private transient queue fed by the patterns bound to it."""

    async def bind(self, pattern: str) -> None:
        """Start receiving messages whose key matches; returns once the binding is in place."""

    async def unbind(self, pattern: str) -> None:
        """Stop receiving messages for this pattern."""

    async def close(self) -> None:
        """Delete the queue and stop the handler."""


@runtime_checkable
class Consumer(Protocol):
    """A running consumer of a work queue."""

    async def close(self) -> None:
        """Stop consuming; unacknowledged messages go back to the queue."""


@runtime_checkable
class Bus(Protocol):
    """What a service needs from a broker. See the module docstring for the guarantees."""

    name: str

    async def connect(self) -> None:
        """Open the connection; retries until the broker answers or gives up with an error."""

    async def close(self) -> None:
        """Close everything this bus opened."""

    @property
    def is_ready(self) -> bool:
        """Whether the broker is reachable right now (for /readyz)."""

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        persistent: bool = False,
    ) -> None:
        """Publish to the topic exchange and wait for the broker's confirm."""

    async def subscribe(
        self,
        handler: Handler,
        *,
        name: str = "",
        on_gap: GapHandler | None = None,
        on_loss: LossHandler | None = None,
    ) -> Subscription:
        """Create a private queue whose deliveries go to `handler`; bind patterns to it.

        `name` labels its queue, logs and metrics; `on_gap` is called whenever deliveries to it
        may have been lost, after `on_loss` marked where."""

    async def consume(
        self,
        queue: str,
        patterns: list[str],
        handler: Handler,
        *,
        prefetch: int = 64,
        single_active: bool = False,
    ) -> Consumer:
        """Consume a durable work queue bound to `patterns`, declaring it if needed."""

    async def request(
        self,
        routing_key: str,
        body: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Publish a request and wait for its one reply."""

    async def reply(self, request: Message, body: bytes) -> None:
        """Answer a request received by a handler; a no-op for messages that want no reply."""


def topic_matches(pattern: str, routing_key: str) -> bool:
    """RabbitMQ topic matching: `*` is one word, `#` is zero or more words."""
    return _match(pattern.split("."), routing_key.split("."))


def _match(pattern: list[str], key: list[str]) -> bool:
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, key[i:]) for i in range(len(key) + 1))
    if not key:
        return False
    return (head == "*" or head == key[0]) and _match(rest, key[1:])

"""`RabbitBus`: the `Bus` on RabbitMQ through aio-pika (the contract is in `..base`).

Topology: one durable topic exchange. A subscription is an exclusive auto-delete queue consumed
without acks; a work queue is a durable quorum queue consumed with acks; requests use direct
reply-to.

Channels: one confirm channel publishes everything and also consumes `amq.rabbitmq.reply-to`
(RabbitMQ requires both on the same channel). Each subscription and each consumer has its own
channel, so a consumer's prefetch and its close (which requeues what it has not acknowledged)
stay its own.

Modules, one role each, each stating its guarantees:
- `connection`: the first connection retried, every round trip bounded, publishing with confirms
  (straight to aiormq's `basic_publish` for the bus's own publishes);
- `subscriptions`: broadcast, at-most-once, with the gaps reported (`on_gap`);
- `consumers`: work queues, at-least-once, settled in groups (`acks`: one `multiple` ack per
  loop turn);
- `rpc`: request/reply, and the one reach-in into aiormq (subscriptions and consumers consume
  through it);
- `bus`: `RabbitBus`, which puts them together; `messages`: aiormq's deliveries as `Message`s.
"""

from __future__ import annotations

from .bus import RabbitBus

__all__ = ["RabbitBus"]

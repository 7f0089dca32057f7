"""Webhooks on real RabbitMQ: the senders' queue is durable and keeps events while no sender
runs, a sender killed mid-way loses nothing (at least once), and the distributed stack (history,
presence, a gateway and `roomcast webhooks` as processes) posts its events, signed."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.exceptions import ChannelPreconditionFailed
from prometheus_client import REGISTRY

from roomcast.shared.bus.rabbit import RabbitBus
from roomcast.shared.config import load_settings
from roomcast.shared.secantus import SecantusServer
from roomcast.webhooks.emitter import WebhookEmitter
from roomcast.webhooks.events import WebhookEvent, queue_name, room_event
from roomcast.webhooks.sender import WebhookSender
from tests.servers.rabbitmq import machine_broker_url
from tests.support.chat_client import ChatClient
from tests.support.cluster import Cluster, ServiceProcess
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

SECRET = "integration-webhook-secret-0123"


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(SECRET) as rx:
        yield rx


@pytest.fixture
async def cluster(
    tmp_path: Path, secantus_server: SecantusServer, receiver: WebhookReceiver
) -> AsyncIterator[Cluster]:
    c = Cluster(
        tmp_path,
        machine_broker_url(),
        str(secantus_server.url),
        heartbeat_interval="1",
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_retry_first="0.05",
        webhook_retry_max="0.2",
        webhook_concurrency="4",
    )
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def emitter(cluster: Cluster) -> AsyncIterator[WebhookEmitter]:
    """Publishes as history and presence do on RabbitMQ: persistent, confirmed."""
    bus = RabbitBus(cluster.amqp_url, exchange=cluster.exchange, name="test-webhook-emitter")
    await bus.connect()
    yield WebhookEmitter(bus, persistent=True)
    await bus.close()


def events(count: int, room: str = "r") -> list[WebhookEvent]:
    at = int(time.time() * 1000)
    return [room_event("member.joined", room, at, f"user{n}") for n in range(count)]


async def emit_each(emitter: WebhookEmitter, batch: list[WebhookEvent]) -> set[str]:
    for event in batch:
        await emitter.emit([event])
    return {e.id for e in batch}


async def queue_state(cluster: Cluster) -> int:
    """Messages ready in the senders' queue; fails unless it is durable and a quorum queue."""
    connection = await aio_pika.connect(cluster.amqp_url)
    async with connection:
        channel = await connection.channel()
        with pytest.raises(ChannelPreconditionFailed):  # it exists, and is not transient
            await channel.declare_queue(queue_name(cluster.exchange), durable=False)
        channel = await connection.channel()
        queue = await channel.declare_queue(
            queue_name(cluster.exchange), durable=True, arguments={"x-queue-type": "quorum"}
        )
        count = queue.declaration_result.message_count
        assert count is not None
        return count


async def test_the_queue_is_durable_and_keeps_events_while_no_sender_runs(
    cluster: Cluster, receiver: WebhookReceiver, emitter: WebhookEmitter
) -> None:
    sender = await cluster.start("webhooks")
    assert await sender.stop() == 0
    sent = await emit_each(emitter, events(20))
    assert await queue_state(cluster) == 20
    assert receiver.posts == []
    await cluster.restart(sender)
    await receiver.wait_for(lambda rx: rx.event_ids() == sent, timeout=60)
    assert receiver.verified()


async def test_a_sender_killed_mid_way_loses_nothing(
    cluster: Cluster, receiver: WebhookReceiver, emitter: WebhookEmitter
) -> None:
    receiver.answer([200] * 10 + [500] * 10_000)  # then it fails: POSTs wait in their retries
    first = await cluster.start("webhooks")
    sent = await emit_each(emitter, events(40))
    await receiver.wait_for(lambda rx: len(rx.posts) >= 20, timeout=60)
    first.signal(signal.SIGKILL)
    await first.wait()
    receiver.script.clear()
    second: ServiceProcess = await cluster.start("webhooks")
    await receiver.wait_for(lambda rx: rx.event_ids() == sent, timeout=60)
    await second.stop()
    assert receiver.verified()
    # at least once: what was in flight when the first died may have come twice, no more lost
    assert len(receiver.events()) >= len(sent)


async def test_the_distributed_stack_posts_room_member_and_message_events(
    cluster: Cluster, receiver: WebhookReceiver
) -> None:
    await cluster.start("webhooks")
    (gateway,) = await cluster.start_stack(gateways=1)
    alice = await ChatClient.connect(gateway.ws)
    try:
        await alice.join("alice", "lobby")
        sent = await alice.say("lobby", "hello from the stack")
        await alice.request("userLeave", {"room": "lobby"})
        await receiver.wait_for(
            lambda rx: {"room.vacated", "message.posted"} <= {e["type"] for e in rx.events()},
            timeout=60,
        )
    finally:
        await alice.close()
    lobby = [e for e in receiver.events() if e["room"] == "lobby"]
    assert sorted((str(e["type"]), e.get("username")) for e in lobby) == [
        ("member.joined", "alice"),
        ("member.left", "alice"),
        ("message.posted", None),
        ("room.occupied", None),
        ("room.vacated", None),
    ]
    (posted,) = [e for e in lobby if e["type"] == "message.posted"]
    assert posted["message"] == sent
    assert receiver.verified()


async def test_a_post_held_too_long_is_handed_back_to_the_durable_queue(
    cluster: Cluster, receiver: WebhookReceiver, emitter: WebhookEmitter
) -> None:
    """RabbitMQ's consumer timeout and delivery limit never see a long outage: after its hold,
    a failing POST is published anew (confirmed) and its delivery acknowledged."""
    receiver.answer([500] * 10_000)
    requeued = REGISTRY.get_sample_value("roomcast_webhook_requeued_total") or 0.0
    settings = load_settings(
        amqp_url=cluster.amqp_url,
        exchange=cluster.exchange,
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_retry_first=0.02,
        webhook_retry_max=0.05,
    )
    bus = RabbitBus(cluster.amqp_url, exchange=cluster.exchange, name="test-webhook-sender")
    await bus.connect()
    sender = WebhookSender(bus, settings, hold=0.2)
    try:
        await sender.start()
        sent = await emit_each(emitter, events(3))
        await receiver.wait_for(lambda rx: len(rx.posts) >= 30, timeout=60)
        await sender.stop()
        assert (REGISTRY.get_sample_value("roomcast_webhook_requeued_total") or 0) >= requeued + 3
        assert await queue_state(cluster) == 3  # handed back, nothing dropped
        receiver.script.clear()
        await sender.start()
        await receiver.wait_for(lambda rx: rx.event_ids() == sent, timeout=60)
    finally:
        await sender.stop()
        await bus.close()
    assert receiver.verified()

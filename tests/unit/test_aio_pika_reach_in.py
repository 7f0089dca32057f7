"""What roomcast.shared.bus.rabbit takes from aio-pika beyond its documented API, checked against
the installed version so that an upgrade fails here, loudly and by name, and not in production.

- `rpc.underlay_channel`: aiormq's channel under a robust channel (`get_underlay_channel`), whose
  `basic_consume(queue, callback, no_ack=...)` consumes direct reply-to.
- `subscriptions`: a robust channel's `reopen_callbacks`, called after a reopen has restored the
  channel's queues, bindings and consumers (tests/contract proves the order against a broker).
- `consumers` and `acks`: work queues consumed on aiormq's channel too (`basic_consume` with a
  consumer tag of their own, the broker's cancels through `on_consumer_cancel_callbacks`),
  settled with `basic_ack(multiple=..., wait=False)`, `basic_reject`, `basic_nack`; each
  delivery's callback runs as a task of its own, started in delivery order; a cancelled
  consumer's queue is declared and bound again by the robust queue's `restore()`.
- `connection.Publisher.send`: aiormq's `basic_publish(..., wait=False)`, which queues the frames
  and releases the channel's lock without waiting for the socket's drain.
- `corking`: aiormq's `TransportFactory` (`create(url, **kwargs)` giving a reader and a writer,
  `ssl_context_provider` among the keyword arguments), and aio-pika's connection keeping the
  keyword arguments it hands to aiormq in `self.kwargs`.
- pyproject.toml pins aio-pika's major version; the installed one must be inside the pin.
"""

from __future__ import annotations

import inspect
import tomllib
from importlib import metadata
from pathlib import Path

import aio_pika
import aiormq
import pytest
from aio_pika.robust_channel import RobustChannel
from aio_pika.robust_queue import RobustQueue
from aiormq.abc import DeliveredMessage
from packaging.requirements import Requirement

from roomcast.shared.bus.rabbit import acks, connection, consumers, corking, rpc

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_installed_aio_pika_is_the_major_version_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (pin,) = [
        Requirement(r) for r in project["project"]["dependencies"] if r.startswith("aio-pika")
    ]
    installed = metadata.version("aio-pika")
    assert pin.specifier.contains(installed), f"aio-pika {installed} is outside {pin}"
    assert any(s.operator == "<" for s in pin.specifier), f"{pin} pins no upper bound"


def test_robust_channel_still_hands_out_its_aiormq_channel() -> None:
    method = getattr(RobustChannel, "get_underlay_channel", None)
    assert method is not None, (
        "aio-pika's RobustChannel lost get_underlay_channel: rewrite rpc.underlay_channel"
    )
    assert inspect.iscoroutinefunction(method)
    assert inspect.iscoroutinefunction(RobustChannel.ready)
    assert "underlay" in inspect.getsource(rpc.underlay_channel)  # the reach-in lives there


def test_aiormq_channel_still_consumes_the_way_rpc_calls_it() -> None:
    parameters = inspect.signature(aiormq.Channel.basic_consume).parameters
    for name in ("queue", "consumer_callback", "no_ack"):
        assert name in parameters, f"aiormq.Channel.basic_consume has no {name!r} any more"
    assert list(parameters)[1:3] == ["queue", "consumer_callback"]  # rpc passes them by position
    assert issubclass(aiormq.Channel, aiormq.abc.AbstractChannel)
    assert hasattr(aiormq.Channel, "is_closed")


def test_robust_channel_still_has_reopen_callbacks_called_after_its_restore() -> None:
    assert "reopen_callbacks" in inspect.getsource(RobustChannel.__init__)
    assert "reopen_callbacks" in aio_pika.abc.AbstractRobustChannel.__annotations__
    source = inspect.getsource(RobustChannel.reopen)
    assert "reopen_callbacks" in source, "RobustChannel.reopen no longer calls reopen_callbacks"
    # The callbacks come after the reopen itself, which declares, binds and consumes again.
    assert source.index("super().reopen()") < source.index("reopen_callbacks")
    assert "queue.restore()" in inspect.getsource(RobustChannel._on_open)


def test_aiormq_channel_still_settles_the_way_acks_calls_it() -> None:
    for method, names in (
        (aiormq.Channel.basic_ack, ("delivery_tag", "multiple", "wait")),
        (aiormq.Channel.basic_reject, ("delivery_tag", "requeue", "wait")),
        (aiormq.Channel.basic_nack, ("delivery_tag", "multiple", "requeue", "wait")),
    ):
        parameters = inspect.signature(method).parameters
        for name in names:
            assert name in parameters, f"aiormq.Channel.{method.__name__} has no {name!r} any more"
        assert list(parameters)[1] == "delivery_tag"  # acks passes the tag by position
        assert inspect.iscoroutinefunction(method)
    assert "basic_ack" in inspect.getsource(acks.GroupAcks._send)


def test_aiormq_still_runs_each_delivery_as_a_task_started_in_order() -> None:
    """`GroupAcks.delivered` relies on the callbacks starting in delivery order, and consumers
    on the consumer tag it chooses and on the broker's cancels reaching its callback."""
    source = inspect.getsource(aiormq.Channel._on_deliver_frame)
    assert "create_task(consumer(message))" in source
    assert "consumer_tag" in inspect.signature(aiormq.Channel.basic_consume).parameters
    assert "on_consumer_cancel_callbacks" in inspect.getsource(aiormq.Channel.__init__)
    assert "on_consumer_cancel_callbacks" in aiormq.abc.AbstractChannel.__annotations__
    assert isinstance(DeliveredMessage.delivery_tag, property)
    assert "channel" in DeliveredMessage.__annotations__
    assert "on_consumer_cancel_callbacks" in inspect.getsource(consumers.RabbitConsumer._consume)


def test_robust_queue_restore_still_declares_and_binds_again() -> None:
    source = inspect.getsource(RobustQueue.restore)
    assert "self.declare()" in source and "self.bind(" in source
    assert "_queue.restore()" in inspect.getsource(consumers.RabbitConsumer._consume_again)


def test_aiormq_still_publishes_without_waiting_for_the_drain() -> None:
    parameters = inspect.signature(aiormq.Channel.basic_publish).parameters
    for name in ("body", "exchange", "routing_key", "properties", "mandatory", "wait"):
        assert name in parameters, f"aiormq.Channel.basic_publish has no {name!r} any more"
    assert "drain_future = self.create_future() if wait else None" in inspect.getsource(
        aiormq.Channel.basic_publish
    ), "aiormq's basic_publish changed what wait=False means: review Publisher.send"
    assert "wait=False" in inspect.getsource(connection.Publisher.send)


def test_aiormq_and_aio_pika_still_take_a_transport_factory() -> None:
    from aiormq.connection import TransportFactory

    assert "transport_factory" in inspect.signature(aiormq.Connection.__init__).parameters
    assert "self._transport_factory.create(" in inspect.getsource(aiormq.Connection.connect)
    assert "ssl_context_provider" in inspect.getsource(aiormq.Connection.connect)
    assert issubclass(corking.CorkedTransportFactory, TransportFactory)
    # aio-pika hands its connection's `kwargs` to aiormq on every (re)connect
    assert "**self.kwargs" in inspect.getsource(aio_pika.Connection.connect)
    assert issubclass(corking.CorkedRobustConnection, aio_pika.RobustConnection)

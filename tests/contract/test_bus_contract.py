"""The bus contract (roomcast.shared.bus.base): every test body runs on InMemoryBus and RabbitBus.

Waits are bounded and generous; no test asserts how long anything took. Where a test shows that
something did *not* arrive, it publishes a sentinel afterwards from the same publisher and waits
for that: per-queue order makes the absence certain without sleeping.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import aio_pika
import aiormq
import pytest
from prometheus_client import REGISTRY

from roomcast.shared.bus import (
    BusTimeoutError,
    BusUnavailableError,
    Consumer,
    Handler,
    InMemoryBus,
    Message,
    RejectMessage,
    Subscription,
    topic_matches,
)
from roomcast.shared.bus.rabbit import RabbitBus, rpc
from tests.servers.rabbitmq import free_port, machine_broker_url

if TYPE_CHECKING:
    from tests.contract.conftest import BusEnv, Restartable
    from tests.servers import PrivateRabbitNode

WAIT = 10.0
T = TypeVar("T")


class Inbox:
    """A handler that records what it receives and lets a test wait for a condition on it."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Event()

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)
        self._changed.set()

    @property
    def bodies(self) -> list[bytes]:
        return [m.body for m in self.messages]

    @property
    def keys(self) -> list[str]:
        return [m.routing_key for m in self.messages]

    async def wait_for(
        self, condition: Callable[[list[Message]], bool], within: float = WAIT
    ) -> list[Message]:
        try:
            async with asyncio.timeout(within):
                while not condition(self.messages):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"not met within {within:g}s; received {self.messages!r}")
        return self.messages

    async def wait_for_body(self, body: bytes, within: float = WAIT) -> list[Message]:
        return await self.wait_for(lambda ms: any(m.body == body for m in ms), within)

    async def wait_for_key(self, key: str, within: float = WAIT) -> list[Message]:
        return await self.wait_for(lambda ms: any(m.routing_key == key for m in ms), within)

    async def wait_for_count(self, count: int, within: float = WAIT) -> list[Message]:
        return await self.wait_for(lambda ms: len(ms) >= count, within)


async def bounded(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(WAIT):
        return await awaitable


# pattern -> (keys it matches, keys it does not match), as RabbitMQ's topic exchange does it.
TOPIC_TABLE: dict[str, tuple[list[str], list[str]]] = {
    "room.a.msg": (["room.a.msg"], ["room.a", "room.a.msgs", "room.a.msg.x", "room.b.msg"]),
    "room.a.*": (["room.a.msg", "room.a.x"], ["room.a", "room.a.msg.x", "room.b.msg"]),
    "room.*.msg": (["room.a.msg", "room.b.msg"], ["room.msg", "room.a.b.msg", "room.a.msgs"]),
    "room.#": (["room", "room.a", "room.a.msg.x"], ["rooms.a", "x.room", "x.room.a"]),
    "#.msg": (["msg", "room.msg", "room.a.msg"], ["room.a.msgs", "room.a.msg.x"]),
    "room.#.msg": (["room.msg", "room.a.msg", "room.a.b.msg"], ["room.a.b", "x.room.a.msg"]),
    "*": (["room", "msg"], ["room.a", "room.a.msg"]),
    "*.*": (["room.a", "x.y"], ["room", "room.a.msg"]),
    "#": (["room", "room.a.msg", "x.y.z.w"], []),
    "*.#": (["room", "room.a", "room.a.msg"], []),
}
TOPIC_CASES = [
    (pattern, key, matched)
    for pattern, (yes, no) in TOPIC_TABLE.items()
    for keys, matched in ((yes, True), (no, False))
    for key in keys
]


@pytest.mark.unit
@pytest.mark.parametrize(("pattern", "key", "matched"), TOPIC_CASES)
def test_topic_matches(pattern: str, key: str, matched: bool) -> None:
    assert topic_matches(pattern, key) is matched


# --- broadcast: subscriptions ---------------------------------------------------------------


async def test_subscription_routes_star_and_hash_like_rabbitmq(env: BusEnv) -> None:
    inboxes: dict[str, Inbox] = {}
    for pattern in TOPIC_TABLE:
        inboxes[pattern] = Inbox()
        sub = await env.bus.subscribe(inboxes[pattern], name="topic")
        await sub.bind(pattern)
        await sub.bind("zz.end")
    keys = sorted({key for yes, no in TOPIC_TABLE.values() for key in yes + no})
    for key in keys:
        await env.bus.publish(key, key.encode())
    await env.bus.publish("zz.end", b"end")
    for pattern, (yes, no) in TOPIC_TABLE.items():
        received = await inboxes[pattern].wait_for_key("zz.end")
        got = {m.routing_key for m in received}
        assert got & set(yes + no) == set(yes), pattern


async def test_subscription_is_a_subscription(env: BusEnv) -> None:
    sub = await env.bus.subscribe(Inbox())
    assert isinstance(sub, Subscription)
    await sub.close()


async def test_bind_then_receive_unbind_then_not(env: BusEnv) -> None:
    inbox = Inbox()
    sub = await env.bus.subscribe(inbox, name="bind")
    await env.bus.publish("room.a.before", b"before-bind")
    await sub.bind("room.a.*")
    await sub.bind("room.end.*")
    await env.bus.publish("room.a.msg", b"bound")
    await inbox.wait_for_body(b"bound")

    await sub.unbind("room.a.*")
    await env.bus.publish("room.a.msg", b"after-unbind")
    await env.bus.publish("room.end.x", b"end")
    await inbox.wait_for_body(b"end")
    assert inbox.bodies == [b"bound", b"end"]


async def test_subscription_gets_one_copy_when_two_patterns_match(env: BusEnv) -> None:
    inbox = Inbox()
    sub = await env.bus.subscribe(inbox, name="twice")
    await sub.bind("room.a.*")
    await sub.bind("room.#")
    await env.bus.publish("room.a.msg", b"once")
    await env.bus.publish("room.a.end", b"end")
    await inbox.wait_for_body(b"end")
    assert inbox.bodies == [b"once", b"end"]


async def test_work_queue_gets_one_copy_when_two_patterns_match(env: BusEnv) -> None:
    inbox = Inbox()
    await env.bus.consume(env.queue(), ["room.a.*", "#.msg"], inbox, prefetch=1)
    await env.bus.publish("room.a.msg", b"once")
    await env.bus.publish("room.a.end", b"end")
    await inbox.wait_for_body(b"end")
    assert inbox.bodies == [b"once", b"end"]


async def test_subscription_keeps_publisher_order_and_carries_headers(env: BusEnv) -> None:
    inbox = Inbox()

    async def handler(message: Message) -> None:
        if int(message.body) % 3 == 0:
            await asyncio.sleep(0.001)  # a handler that awaits must still see them in order
        await inbox(message)

    sub = await env.bus.subscribe(handler, name="order")
    await sub.bind("room.order.*")
    sent = [str(i).encode() for i in range(200)]
    for body in sent:
        await env.bus.publish("room.order.msg", body, headers={"n": body.decode()})
    messages = await inbox.wait_for_count(len(sent))
    assert [m.body for m in messages] == sent
    assert all(m.headers == {"n": m.body.decode()} for m in messages)
    assert {m.routing_key for m in messages} == {"room.order.msg"}


async def test_failing_subscription_handler_drops_only_that_message(env: BusEnv) -> None:
    inbox = Inbox()

    async def handler(message: Message) -> None:
        await inbox(message)
        if message.body == b"boom":
            raise RuntimeError("handler failure (expected by the test)")

    sub = await env.bus.subscribe(handler, name="failing")
    await sub.bind("room.f.*")
    for body in (b"1", b"boom", b"2"):
        await env.bus.publish("room.f.msg", body)
    await inbox.wait_for_body(b"2")
    await env.bus.publish("room.f.msg", b"end")
    await inbox.wait_for_body(b"end")
    assert inbox.bodies == [b"1", b"boom", b"2", b"end"]


async def test_closed_subscription_receives_nothing(env: BusEnv) -> None:
    closed, live = Inbox(), Inbox()
    sub = await env.bus.subscribe(closed, name="closed")
    await sub.bind("room.c.*")
    other = await env.bus.subscribe(live, name="live")
    await other.bind("room.c.*")
    await sub.close()
    await env.bus.publish("room.c.msg", b"after-close")
    await live.wait_for_body(b"after-close")
    assert closed.bodies == []


# --- losses are reported: on_gap, bounded inboxes, supervised handler tasks -------------------


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


async def until(condition: Callable[[], bool], what: str, within: float = WAIT) -> None:
    """A bounded wait for something the test cannot await directly (a metric, a flag)."""
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 - metrics and flags have no event
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"{what}: not within {within:g}s")


class GapCounter:
    """An `on_gap` that counts its calls and what the subscription had received by then."""

    def __init__(self, inbox: Inbox | None = None) -> None:
        self.calls = 0
        self.seen_at_call: list[int] = []
        self._inbox = inbox
        self.called = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        self.seen_at_call.append(len(self._inbox.messages) if self._inbox else 0)
        self.called.set()


def held_at_zero(
    inbox: Inbox,
) -> tuple[Callable[[Message], Awaitable[None]], asyncio.Event, asyncio.Event]:
    """A handler that holds message b"0" until `release` is set (`holding` says it has it), so
    the deliveries behind it fill the subscription's inbox; then everything reaches `inbox`."""
    release, holding = asyncio.Event(), asyncio.Event()

    async def slow(message: Message) -> None:
        if message.body == b"0":
            holding.set()
            await release.wait()
        await inbox(message)

    return slow, release, holding


async def test_full_inbox_drops_counts_and_calls_on_gap_once_it_has_room(env: BusEnv) -> None:
    bus = await env.another_bus(inbox_limit=10)
    label = f"overflow-{env.kind}-{uuid.uuid4().hex[:6]}"
    dropped = "roomcast_bus_inbox_dropped_total"
    inbox = Inbox()
    slow, release, holding = held_at_zero(inbox)
    on_gap = GapCounter(inbox)
    sub = await bus.subscribe(slow, name=label, on_gap=on_gap)
    await sub.bind("room.o.*")
    await bus.publish("room.o.msg", b"0")
    await bounded(holding.wait())  # the handler holds "0": the inbox itself is empty
    for i in range(1, 16):  # 10 fit, 5 do not
        await bus.publish("room.o.msg", b"%d" % i)
    await until(lambda: sample(dropped, subscription=label) == 5, "5 drops")
    assert sample("roomcast_bus_inbox_depth", subscription=label) == 10
    assert on_gap.calls == 0  # no room yet
    assert sample("roomcast_bus_inbox_overflows_total", subscription=label) == 1  # one episode

    release.set()
    await bounded(on_gap.called.wait())
    await inbox.wait_for_count(11)
    await bus.publish("room.o.msg", b"end")
    await inbox.wait_for_body(b"end")
    assert inbox.bodies == [b"%d" % i for i in range(11)] + [b"end"]
    assert on_gap.calls == 1
    assert sample(dropped, subscription=label) == 5
    assert sample("roomcast_bus_gaps_total", subscription=label, reason="overflow") == 1


async def test_a_dying_subscription_task_is_counted_and_restarted(env: BusEnv) -> None:
    class Fatal(BaseException):
        """Escapes the loop's `except Exception`, as no handler error should."""

    inbox = Inbox()

    async def handler(message: Message) -> None:
        await inbox(message)
        if message.body == b"die":
            raise Fatal("the subscription loop dies (expected by the test)")

    deaths = sample("roomcast_bus_task_deaths_total", task="subscription")
    sub = await env.bus.subscribe(handler, name="dies")
    await sub.bind("room.d.*")
    for body in (b"1", b"die", b"2"):
        await env.bus.publish("room.d.msg", body)
    await inbox.wait_for_body(b"2")
    assert inbox.bodies == [b"1", b"die", b"2"]
    assert sample("roomcast_bus_task_deaths_total", task="subscription") == deaths + 1
    await sub.close()  # and close() ends it for good: no death counted
    assert sample("roomcast_bus_task_deaths_total", task="subscription") == deaths + 1


async def test_on_gap_exceptions_are_logged_and_later_gaps_still_call_it(
    restartable: Restartable,
) -> None:
    bus, calls = restartable.bus, list[int]()

    async def failing_gap() -> None:
        calls.append(len(calls))
        raise RuntimeError("on_gap failure (expected by the test)")

    await bus.subscribe(Inbox(), name="failing-gap", on_gap=failing_gap)
    for expected in (1, 2):
        async with restartable.outage():
            pass
        await until(lambda n=expected: len(calls) >= n, f"on_gap call {expected}", 60)  # type: ignore[misc]


async def test_on_gap_after_a_reconnect_comes_once_every_binding_is_back(
    restartable: Restartable,
) -> None:
    """on_gap publishes one message per binding at once: a binding not yet restored would lose
    its message, and the wait for all three would fail."""
    bus, inbox = restartable.bus, Inbox()
    keys = ["room.a.msg", "room.b.msg", "user.x.y"]
    published = asyncio.Event()
    calls = 0

    async def on_gap() -> None:
        nonlocal calls
        calls += 1
        for key in keys:
            await bus.publish(key, b"after-gap %d %s" % (calls, key.encode()))
        published.set()

    sub = await bus.subscribe(inbox, name="gap", on_gap=on_gap)
    for pattern in ("room.a.*", "room.b.*", "user.#"):
        await sub.bind(pattern)
    await bus.publish("room.a.msg", b"before")
    await inbox.wait_for_body(b"before")
    assert calls == 0  # nothing was lost yet

    async with restartable.outage():
        await until(lambda: not bus.is_ready, "not ready while the broker is away", 60)
        with pytest.raises(BusUnavailableError):
            await bus.publish("room.a.msg", b"lost")
    async with asyncio.timeout(90):  # a RabbitMQ app start and a reconnect, on a busy machine
        await published.wait()
    await inbox.wait_for(lambda ms: all(any(k.encode() in m.body for m in ms) for k in keys))
    assert bus.is_ready
    assert b"lost" not in inbox.bodies


class LossRecorder:
    """`on_loss` and `on_gap` that record, in order, how much the handler had received at each."""

    def __init__(self, inbox: Inbox) -> None:
        self.calls: list[tuple[str, int]] = []
        self._inbox = inbox
        self.gap = asyncio.Event()

    def on_loss(self) -> None:
        self.calls.append(("loss", len(self._inbox.messages)))

    async def on_gap(self) -> None:
        self.calls.append(("gap", len(self._inbox.messages)))
        self.gap.set()


async def test_on_loss_marks_where_a_reconnect_began_and_comes_before_on_gap(
    restartable: Restartable,
) -> None:
    """Deliveries published after the reconnect may reach the handler before on_gap: on_loss
    says where the loss began (after the 5 delivered before the outage, before the new ones)."""
    bus, inbox = restartable.bus, Inbox()
    marks = LossRecorder(inbox)
    sub = await bus.subscribe(inbox, name="loss", on_gap=marks.on_gap, on_loss=marks.on_loss)
    await sub.bind("room.l.*")
    for i in range(5):
        await bus.publish("room.l.msg", b"before %d" % i)
    await inbox.wait_for_count(5)
    assert marks.calls == []

    async with restartable.outage():
        await until(lambda: not bus.is_ready, "not ready while the broker is away", 60)
        # marked when the connection went (again, at the same point, if a reconnect attempt
        # reached the broker while it was stopping: where the loss began is what counts)
        assert marks.calls and set(marks.calls) == {("loss", 5)}
    async with asyncio.timeout(90):  # a RabbitMQ app start and a reconnect, on a busy machine
        await marks.gap.wait()
    await bus.publish("room.l.msg", b"after")
    await inbox.wait_for_body(b"after")
    assert set(marks.calls) == {("loss", 5), ("gap", 5)}
    assert marks.calls.index(("loss", 5)) < marks.calls.index(("gap", 5))


async def test_a_full_inbox_marks_the_loss_after_what_it_had_accepted(env: BusEnv) -> None:
    bus = await env.another_bus(inbox_limit=4)
    inbox = Inbox()
    slow, release, holding = held_at_zero(inbox)
    marks = LossRecorder(inbox)
    label = f"loss-full-{env.kind}-{uuid.uuid4().hex[:6]}"
    sub = await bus.subscribe(slow, name=label, on_gap=marks.on_gap, on_loss=marks.on_loss)
    await sub.bind("room.f.*")
    await bus.publish("room.f.msg", b"0")
    await bounded(holding.wait())
    for i in range(1, 8):  # 4 fit behind "0", 3 are dropped
        await bus.publish("room.f.msg", b"%d" % i)
    await until(
        lambda: sample("roomcast_bus_inbox_dropped_total", subscription=label) == 3, "3 drops"
    )
    assert marks.calls == []  # the handler has not had what came before the first drop yet
    release.set()
    await bounded(marks.gap.wait())
    await inbox.wait_for_count(5)
    # the mark falls after the 5 accepted ("0" to "4"), before anything accepted later
    assert marks.calls[0] == ("loss", 5)
    assert marks.calls[1][0] == "gap"
    assert inbox.bodies == [b"%d" % i for i in range(5)]


@pytest.mark.unit
async def test_memory_outage_makes_the_bus_unavailable_then_reports_the_gap() -> None:
    bus = InMemoryBus(name="outage")
    await bus.connect()
    try:
        inbox, gaps, other_gaps = Inbox(), GapCounter(), GapCounter()
        sub = await bus.subscribe(inbox, name="outage", on_gap=gaps)
        await bus.subscribe(Inbox(), name="other", on_gap=other_gaps)
        await sub.bind("room.a.*")
        consumed = Inbox()
        await bus.consume("outage.q", ["job.*"], consumed)
        assert bus.is_ready
        async with bus.outage():
            assert not bus.is_ready
            for operation in (
                bus.publish("room.a.msg", b"lost"),
                bus.request("rpc.x", b"?", timeout=1),
                bus.reply(Message("rpc.x", b"", reply_to="r", correlation_id="c"), b"!"),
                bus.subscribe(Inbox()),
                sub.bind("room.b.*"),
                sub.unbind("room.a.*"),
                bus.consume("outage.q", ["job.*"], Inbox()),
            ):
                with pytest.raises(BusUnavailableError):
                    await operation
            with pytest.raises(RuntimeError):
                async with bus.outage():
                    pass
            assert gaps.calls == 0  # reported when the bus is back, not before
        assert bus.is_ready
        await bounded(gaps.called.wait())
        await bounded(other_gaps.called.wait())
        await bus.publish("room.a.msg", b"after")
        await bus.publish("job.run", b"work", persistent=True)
        await inbox.wait_for_body(b"after")
        assert inbox.bodies == [b"after"]
        assert consumed.bodies == [b"work"]
        assert (gaps.calls, other_gaps.calls) == (1, 1)
    finally:
        await bus.close()


@pytest.mark.unit
async def test_memory_outage_reports_the_gap_even_when_the_block_raises() -> None:
    bus = InMemoryBus(name="outage-raises")
    await bus.connect()
    try:
        gaps = GapCounter()
        await bus.subscribe(Inbox(), on_gap=gaps)
        with pytest.raises(ZeroDivisionError):
            async with bus.outage():
                raise ZeroDivisionError
        assert bus.is_ready
        await bounded(gaps.called.wait())
    finally:
        await bus.close()


# --- work queues -------------------------------------------------------------------------------


async def test_work_queue_gives_each_message_to_exactly_one_consumer(env: BusEnv) -> None:
    queue = env.queue("shared")
    everything = Inbox()
    by_consumer: dict[str, list[bytes]] = {"first": [], "second": []}

    def handler_for(label: str) -> Handler:
        async def handler(message: Message) -> None:
            by_consumer[label].append(message.body)
            await everything(message)

        return handler

    first = await env.bus.consume(queue, ["job.*"], handler_for("first"), prefetch=4)
    await env.bus.consume(queue, ["job.*"], handler_for("second"), prefetch=4)
    assert isinstance(first, Consumer)
    sent = [b"%02d" % i for i in range(40)]
    for body in sent:
        await env.bus.publish("job.run", body)
    await everything.wait_for_count(len(sent))
    await env.bus.publish("job.run", b"end")
    await everything.wait_for_body(b"end")
    assert sorted(everything.bodies) == [*sent, b"end"]  # each exactly once
    assert by_consumer["first"] and by_consumer["second"]  # and shared between both


async def test_work_queue_acknowledges_only_after_the_handler_returns(env: BusEnv) -> None:
    """With prefetch=1 the next message is delivered only once the previous one is acked:
    while the first handler runs, the second must wait."""
    started = Inbox()
    release = asyncio.Event()

    async def handler(message: Message) -> None:
        await started(message)
        if message.body == b"first":
            await release.wait()

    await env.bus.consume(env.queue(), ["job.*"], handler, prefetch=1)
    await env.bus.publish("job.run", b"first")
    await env.bus.publish("job.run", b"second")
    await started.wait_for_body(b"first")
    await asyncio.sleep(0.3)  # room for a wrong early ack to let "second" in
    assert started.bodies == [b"first"]
    release.set()
    await started.wait_for_body(b"second")
    assert started.bodies == [b"first", b"second"]


async def test_work_queue_requeues_after_an_exception(env: BusEnv) -> None:
    seen = Inbox()

    async def handler(message: Message) -> None:
        await seen(message)
        if seen.bodies == [b"retry-me"]:
            raise RuntimeError("transient failure (expected by the test)")

    await env.bus.consume(env.queue(), ["job.*"], handler, prefetch=1)
    await env.bus.publish("job.run", b"retry-me")
    await seen.wait_for(lambda ms: len(ms) >= 2)
    await env.bus.publish("job.run", b"end")
    await seen.wait_for_body(b"end")
    assert seen.bodies == [b"retry-me", b"retry-me", b"end"]


async def test_reject_message_drops_it(env: BusEnv) -> None:
    seen = Inbox()

    async def handler(message: Message) -> None:
        await seen(message)
        if message.body == b"poison":
            raise RejectMessage("cannot ever be processed")

    await env.bus.consume(env.queue(), ["job.*"], handler, prefetch=1)
    await env.bus.publish("job.run", b"poison")
    await env.bus.publish("job.run", b"good")
    await seen.wait_for_body(b"good")
    await env.bus.publish("job.run", b"end")
    await seen.wait_for_body(b"end")
    assert seen.bodies == [b"poison", b"good", b"end"]


async def test_single_active_consumer_takes_over_when_the_first_goes(env: BusEnv) -> None:
    queue = env.queue("sac")
    active, standby = Inbox(), Inbox()
    first = await env.bus.consume(queue, ["job.*"], active, single_active=True)
    await env.bus.consume(queue, ["job.*"], standby, single_active=True)
    for i in range(10):
        await env.bus.publish("job.run", b"a%d" % i)
    await active.wait_for_count(10)

    await first.close()
    for i in range(10):
        await env.bus.publish("job.run", b"b%d" % i)
    await standby.wait_for_count(10)
    assert active.bodies == [b"a%d" % i for i in range(10)]
    assert standby.bodies == [b"b%d" % i for i in range(10)]


async def test_work_queue_keeps_messages_while_no_consumer_runs(env: BusEnv) -> None:
    queue = env.queue("kept")
    consumer = await env.bus.consume(queue, ["job.*"], Inbox())  # declares the queue
    await consumer.close()
    for i in range(5):
        await env.bus.publish("job.run", b"%d" % i)
    # A persistent publish is confirmed by RabbitMQ on storing it; the in-memory bus, which has
    # no disk, confirms it once a consumer processed it: either way it completes.
    persistent = asyncio.create_task(env.bus.publish("job.run", b"persistent", persistent=True))

    inbox = Inbox()
    await env.bus.consume(queue, ["job.*"], inbox, prefetch=1)
    await inbox.wait_for_count(6)
    await bounded(persistent)
    assert inbox.bodies == [b"0", b"1", b"2", b"3", b"4", b"persistent"]


async def test_persistent_publish_is_confirmed_and_delivered(env: BusEnv) -> None:
    inbox = Inbox()
    await env.bus.consume(env.queue(), ["room.*.updateChat"], inbox)
    await env.bus.publish(
        "room.lobby.updateChat", b'{"text":"hi"}', headers={"room": "lobby"}, persistent=True
    )
    (message,) = await inbox.wait_for_count(1)
    assert message.routing_key == "room.lobby.updateChat"
    assert message.body == b'{"text":"hi"}'
    assert dict(message.headers) == {"room": "lobby"}


async def test_publish_without_any_queue_bound_is_fine(env: BusEnv) -> None:
    await env.bus.publish("room.nobody.msg", b"into the void")
    await env.bus.publish("room.nobody.msg", b"into the void", persistent=True)


async def test_closed_bus_raises_unavailable(env: BusEnv) -> None:
    assert env.bus.is_ready
    await env.bus.close()
    assert not env.bus.is_ready
    with pytest.raises(BusUnavailableError):
        await env.bus.publish("room.a.msg", b"x")
    with pytest.raises(BusUnavailableError):
        await env.bus.request("rpc.x", b"x", timeout=1)


# --- request / reply ---------------------------------------------------------------------------


async def responder(env: BusEnv, pattern: str = "rpc.*", delay: float = 0.0) -> Consumer:
    async def answer(message: Message) -> None:
        if delay:
            await asyncio.sleep(delay * (10 - int(message.body or b"0")))
        reply = b"re:" + message.body + b":" + message.headers.get("who", "").encode()
        await env.bus.reply(message, reply)

    return await env.bus.consume(env.queue("rpc"), [pattern], answer)


async def test_request_reply_round_trip(env: BusEnv) -> None:
    await responder(env)
    reply = await env.bus.request("rpc.echo", b"ping", timeout=WAIT, headers={"who": "alice"})
    assert reply == b"re:ping:alice"


async def test_concurrent_requests_are_matched_by_correlation_id(env: BusEnv) -> None:
    await responder(env, delay=0.02)  # the later requests are answered first
    bodies = [b"%d" % i for i in range(10)]
    replies = await asyncio.gather(
        *(env.bus.request("rpc.echo", body, timeout=WAIT) for body in bodies)
    )
    assert replies == [b"re:" + body + b":" for body in bodies]


async def test_request_without_a_replier_times_out(env: BusEnv) -> None:
    async with asyncio.timeout(WAIT):  # a bound on a hang, not a performance assertion
        with pytest.raises(BusTimeoutError):
            await env.bus.request("rpc.nobody", b"hello?", timeout=0.3)


async def test_late_reply_is_dropped(env: BusEnv) -> None:
    release = asyncio.Event()
    answered = asyncio.Event()

    async def slow(message: Message) -> None:
        await release.wait()
        await env.bus.reply(message, b"late")
        answered.set()

    await env.bus.consume(env.queue("slow"), ["rpc.slow"], slow)
    with pytest.raises(BusTimeoutError):
        await env.bus.request("rpc.slow", b"x", timeout=0.3)
    release.set()
    await bounded(answered.wait())
    await responder(env, "rpc.echo")
    assert await env.bus.request("rpc.echo", b"next", timeout=WAIT) == b"re:next:"


async def test_expired_request_is_not_processed_later(env: BusEnv) -> None:
    queue = env.queue("expiry")
    consumer = await env.bus.consume(queue, ["rpc.*"], Inbox())  # declares the queue
    await consumer.close()
    with pytest.raises(BusTimeoutError):
        await env.bus.request("rpc.stale", b"stale", timeout=0.2)
    await asyncio.sleep(0.3)  # let the request's expiry pass (it started a bit after the wait)

    inbox = Inbox()
    await env.bus.consume(queue, ["rpc.*"], inbox, prefetch=1)
    await env.bus.publish("rpc.end", b"end")
    await inbox.wait_for_body(b"end")
    assert inbox.bodies == [b"end"]


async def test_reply_to_a_message_that_wants_none_is_a_no_op(env: BusEnv) -> None:
    await env.bus.reply(Message("room.a.msg", b"x"), b"nobody asked")


# --- RabbitMQ only -----------------------------------------------------------------------------


@pytest.mark.integration
async def test_rabbit_connect_gives_up_with_unavailable() -> None:
    bus = RabbitBus(f"amqp://guest:guest@127.0.0.1:{free_port()}/", connect_timeout=1.0)
    async with asyncio.timeout(WAIT):
        with pytest.raises(BusUnavailableError):
            await bus.connect()
    assert not bus.is_ready
    await bus.close()


@pytest.mark.integration
async def test_rabbit_underlay_channel_is_aiormqs_and_consumes_direct_reply_to() -> None:
    """The one reach-in into aiormq (rpc.underlay_channel), on a real broker."""
    connection = await aio_pika.connect_robust(machine_broker_url())
    async with connection:
        channel = await connection.channel()
        underlay = await bounded(rpc.underlay_channel(channel))
        assert isinstance(underlay, aiormq.abc.AbstractChannel)
        assert not underlay.is_closed

        async def ignore(message: aiormq.abc.DeliveredMessage) -> None:
            pass

        ok = await bounded(underlay.basic_consume(rpc.REPLY_TO, ignore, no_ack=True))
        assert ok.consumer_tag


async def eventually(action: Callable[[], object], what: str, within: float = 30.0) -> object:
    """Retry `action` until it stops raising bus errors: recovery after a restart is
    asynchronous, and what it must do is work again within a bound, not at a given instant."""
    deadline = time.monotonic() + within
    while True:
        try:
            result = action()
            if asyncio.iscoroutine(result):
                result = await result
            return result
        except (BusUnavailableError, AssertionError, pytest.fail.Exception):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {within:g}s") from None
            await asyncio.sleep(0.2)


@pytest.mark.integration
async def test_rabbit_bus_survives_a_broker_restart(private_rabbit: PrivateRabbitNode) -> None:
    """One bus, never re-created, across a restart of its broker: what was confirmed is still
    there, and subscriptions, consumers, publish and request/reply all work again."""
    bus = RabbitBus(private_rabbit.url, exchange="restart", name="restart-test", confirm_timeout=2)
    late = RabbitBus(private_rabbit.url, exchange="restart", name="late-starter")
    late_connect: asyncio.Task[None] | None = None
    await bus.connect()
    try:
        assert "restart-test" in private_rabbit.ctl("list_connections", "client_properties")
        room = Inbox()
        sub = await bus.subscribe(room, name="gateway")
        await sub.bind("room.r.*")
        live = Inbox()
        await bus.consume("restart.live", ["live.*"], live)

        async def answer(message: Message) -> None:
            await bus.reply(message, b"re:" + message.body)

        await bus.consume("restart.rpc", ["rpc.*"], answer)
        parked = await bus.consume("restart.parked", ["parked.*"], Inbox())
        await parked.close()
        assert await bus.request("rpc.x", b"before", timeout=WAIT) == b"re:before"
        await bus.publish("room.r.msg", b"room-before")
        await room.wait_for_body(b"room-before")
        await bus.publish("parked.msg", b"survivor", persistent=True)  # confirmed = stored

        await asyncio.to_thread(private_rabbit.stop_app)
        # While the broker is down a publish fails loudly, and a bus that starts keeps trying.
        with pytest.raises(BusUnavailableError):
            await bus.publish("live.msg", b"unconfirmable", persistent=True)
        late_connect = asyncio.create_task(late.connect())
        await asyncio.to_thread(private_rabbit.start_app)
        await bounded(late_connect)
        assert late.is_ready

        async def ready() -> None:
            assert bus.is_ready

        await eventually(ready, "reconnect")
        survivor = Inbox()
        await eventually(
            lambda: bus.consume("restart.parked", ["parked.*"], survivor), "consume again"
        )
        await survivor.wait_for_body(b"survivor")

        await eventually(lambda: bus.publish("live.msg", b"live-after", persistent=True), "publish")
        await live.wait_for_body(b"live-after")

        # The subscription's queue was exclusive, so it died with the connection; the bus
        # re-declares and re-binds it, and meanwhile a broadcast may be lost (at-most-once).
        attempt = 0

        async def room_delivery() -> None:
            nonlocal attempt
            attempt += 1
            body = b"room-after-%d" % attempt
            await bus.publish("room.r.msg", body)
            await room.wait_for_body(body, within=0.5)

        await eventually(room_delivery, "subscription after restart")

        async def round_trip() -> None:
            assert await bus.request("rpc.x", b"after", timeout=2) == b"re:after"

        await eventually(round_trip, "request/reply after restart")
    finally:
        if late_connect is not None:
            late_connect.cancel()
            await asyncio.gather(late_connect, return_exceptions=True)
        await late.close()
        await bus.close()

"""Webhooks (protocol 2.4): signatures, occupancy, delivery with retries on the in-memory bus to
a real HTTP receiver on 127.0.0.1, and the events the whole system emits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from roomcast.shared.bus import InMemoryBus
from roomcast.shared.config import ConfigError, Settings, load_settings
from roomcast.shared.models import ChatMessage
from roomcast.webhooks import signing
from roomcast.webhooks.emitter import WebhookEmitter, WebhookOutbox
from roomcast.webhooks.events import ROUTING_KEY, WebhookPayload, message_posted, room_event
from roomcast.webhooks.presence import Flip, Occupancy
from roomcast.webhooks.sender import WebhookSender, webhook_target
from tests.support.chat_client import ChatClient
from tests.support.inprocess import running
from tests.support.webhook_receiver import WebhookReceiver

SECRET = "webhook-secret-0123456789"
BODY = b'{"events":[{"id":"e1","type":"room.occupied","time":1,"room":"main"}]}'


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    """A bounded wait for what cannot be awaited (a metric, a list)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - metrics have no event to await
            await asyncio.sleep(0.01)


def fast_settings(url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_url": url,
        "webhook_secret": SECRET,
        "webhook_retry_first": 0.01,
        "webhook_retry_max": 0.05,
        "webhook_timeout": 2,
    }
    return load_settings(**{**values, **extra})


def chat(n: int, room: str = "main") -> ChatMessage:
    return ChatMessage(id=f"msg-{n:05d}", username="alice", body=f"hi {n}", time=now(), room=room)


def now() -> int:
    return int(time.time() * 1000)


# signatures ------------------------------------------------------------------------------
def test_a_signed_body_verifies_and_returns_its_timestamp() -> None:
    header = signing.sign(SECRET, BODY, now=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert signing.verify(header, BODY, SECRET, now=1_700_000_010) == 1_700_000_000


@pytest.mark.parametrize(
    ("body", "secret"),
    [(BODY.replace(b"main", b"mainx"), SECRET), (BODY, "another-secret-0123456")],
    ids=["tampered body", "other secret"],
)
def test_a_changed_body_or_another_secret_is_refused(body: bytes, secret: str) -> None:
    header = signing.sign(SECRET, BODY, now=1000)
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify(header, body, secret, now=1000)


@pytest.mark.parametrize("offset", [301, -301, 86_400])
def test_a_replay_outside_the_window_is_refused(offset: int) -> None:
    header = signing.sign(SECRET, BODY, now=1_700_000_000)
    with pytest.raises(signing.SignatureError, match="tolerance"):
        signing.verify(header, BODY, SECRET, now=1_700_000_000 + offset)
    assert signing.verify(header, BODY, SECRET, now=1_700_000_000 + offset, tolerance=10**6)


def test_a_resigned_old_body_with_a_fresh_timestamp_but_old_signature_is_refused() -> None:
    old = signing.sign(SECRET, BODY, now=1000)
    forged = f"t=5000,{old.split(',')[1]}"
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify(forged, BODY, SECRET, now=5000)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "no Roomcast-Signature"),
        ("", "no Roomcast-Signature"),
        ("v1=abc", "no t="),
        ("t=12", "no v1"),
        ("t=abc,v1=00", "bad or repeated t"),
        ("t=²,v1=00", "bad or repeated t"),
        ("t=1,t=1,v1=00", "bad or repeated t"),
        ("t=1,garbage", "has no '='"),
    ],
)
def test_malformed_headers_say_what_is_wrong(header: str | None, reason: str) -> None:
    with pytest.raises(signing.SignatureError, match=reason):
        signing.verify(header, BODY, SECRET, now=1)


def test_rotation_any_configured_secret_and_any_v1_may_match() -> None:
    new = "the-new-secret-0123456789"
    header = signing.sign(new, BODY, now=50)
    assert signing.verify(header, BODY, [SECRET, new], now=50) == 50
    both = f"{header},v1={signing.signature(SECRET, 50, BODY)}"
    assert signing.verify(both, BODY, SECRET, now=50) == 50
    with pytest.raises(signing.SignatureError, match="no secret"):
        signing.verify(header, BODY, [], now=50)


# settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"webhook_url": "ftp://example.org/x"}, "ROOMCAST_WEBHOOK_URL: URL scheme"),
        ({"webhook_url": "not a url"}, "ROOMCAST_WEBHOOK_URL:"),
        ({"webhook_secret": "short"}, "ROOMCAST_WEBHOOK_SECRET: must be at least 16"),
        ({"webhook_timeout": "0"}, "ROOMCAST_WEBHOOK_TIMEOUT:"),
        ({"webhook_concurrency": "0"}, "ROOMCAST_WEBHOOK_CONCURRENCY:"),
        ({"webhook_give_up_seconds": "-1"}, "ROOMCAST_WEBHOOK_GIVE_UP_SECONDS:"),
        (
            {"webhook_retry_first": "10", "webhook_retry_max": "5"},
            "ROOMCAST_WEBHOOK_RETRY_FIRST .* is longer than ROOMCAST_WEBHOOK_RETRY_MAX",
        ),
    ],
)
def test_bad_webhook_settings_are_one_line_errors(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(**values)
    assert "\n" not in str(caught.value)
    assert "short" not in str(caught.value)  # a secret is never echoed


def test_empty_webhook_settings_mean_unset() -> None:
    settings = load_settings(webhook_url="", webhook_secret=" ")
    assert settings.webhook_url is None and settings.webhook_secret is None


def test_a_sender_needs_the_url_and_the_secret() -> None:
    with pytest.raises(ConfigError, match="ROOMCAST_WEBHOOK_URL: is required"):
        webhook_target(load_settings())
    with pytest.raises(ConfigError, match="ROOMCAST_WEBHOOK_SECRET: is required"):
        webhook_target(load_settings(webhook_url="http://127.0.0.1:9/x"))
    url, secret = webhook_target(fast_settings("http://127.0.0.1:9/x"))
    assert (url, secret.get_secret_value()) == ("http://127.0.0.1:9/x", SECRET)


# events -----------------------------------------------------------------------------------
def test_occupancy_brackets_member_events_with_occupied_and_vacated() -> None:
    occupancy = Occupancy(clock=lambda: 7)

    def kinds(*flips: Flip) -> list[tuple[str, str | None]]:
        return [(e.type, e.username) for e in occupancy.events(flips)]

    assert kinds(Flip("r", "a", True)) == [("room.occupied", None), ("member.joined", "a")]
    assert kinds(Flip("r", "b", True)) == [("member.joined", "b")]
    assert kinds(Flip("r", "a", False)) == [("member.left", "a")]
    # one leaves while another arrives in the same batch: no vacancy
    assert kinds(Flip("r", "b", False), Flip("r", "c", True)) == [
        ("member.left", "b"),
        ("member.joined", "c"),
    ]
    assert kinds(Flip("r", "c", False), Flip("s", "c", True)) == [
        ("member.left", "c"),
        ("room.vacated", None),
        ("room.occupied", None),
        ("member.joined", "c"),
    ]
    assert occupancy.count("r") == 0 and occupancy.count("s") == 1
    assert kinds(Flip("ghost", "x", False)) == [("member.left", "x")]  # never below zero
    assert occupancy.count("ghost") == 0


def test_message_posted_has_a_stable_id_per_room_and_message() -> None:
    one = message_posted(chat(1))
    assert one.id == message_posted(chat(1).model_copy(update={"time": 5})).id
    assert one.id != message_posted(chat(2)).id
    assert one.id != message_posted(chat(1, room="other")).id
    assert one.message == chat(1).model_copy(update={"time": one.time})


def test_a_payload_is_the_wire_body_and_refuses_what_is_not_one() -> None:
    event = message_posted(chat(1))
    body = WebhookPayload(events=[event]).encode()
    decoded = WebhookPayload.model_validate_json(body)
    assert decoded.events == [event]
    assert b"null" not in body  # optional fields are left out
    for bad in (b"{}", b'{"events": []}', b"nope", b'{"events":[{"id":"x","type":"boom"}]}'):
        with pytest.raises(ValueError):
            WebhookPayload.model_validate_json(bad)


# delivery ---------------------------------------------------------------------------------
@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(SECRET) as rx:
        yield rx


@pytest.fixture
async def bus() -> AsyncIterator[InMemoryBus]:
    b = InMemoryBus("webhooks-test")
    await b.connect()
    yield b
    await b.close()


async def started(bus: InMemoryBus, settings: Settings) -> WebhookSender:
    sender = WebhookSender(bus, settings)
    await sender.start()
    return sender


async def test_events_reach_the_receiver_signed(
    bus: InMemoryBus, receiver: WebhookReceiver
) -> None:
    sender = await started(bus, fast_settings(receiver.url))
    before = metric("roomcast_webhook_posts_total", outcome="delivered")
    event = room_event("member.joined", "main", now(), "alice")
    await WebhookEmitter(bus, persistent=False).emit([event])
    await receiver.wait_for(lambda rx: len(rx.delivered()) == 1)
    await sender.stop()
    post = receiver.posts[0]
    assert receiver.verified()
    assert post.headers["content-type"] == "application/json"
    assert post.headers["user-agent"].startswith("roomcast-webhooks")
    assert post.events == [event.model_dump(exclude_none=True)]
    assert metric("roomcast_webhook_posts_total", outcome="delivered") == before + 1


async def test_5xx_answers_are_retried_each_try_signed_anew(
    bus: InMemoryBus, receiver: WebhookReceiver
) -> None:
    receiver.answer([500, 503, 502])
    retries = metric("roomcast_webhook_retries_total")
    failed = metric("roomcast_webhook_posts_total", outcome="failed")
    sender = await started(bus, fast_settings(receiver.url))
    await WebhookEmitter(bus, persistent=False).emit([message_posted(chat(1))])
    await receiver.wait_for(lambda rx: len(rx.delivered()) == 1)
    await sender.stop()
    assert [p.status for p in receiver.posts] == [500, 503, 502, 200]
    assert len({p.body for p in receiver.posts}) == 1
    assert receiver.verified()
    assert metric("roomcast_webhook_retries_total") == retries + 3
    assert metric("roomcast_webhook_posts_total", outcome="failed") == failed + 3


@pytest.mark.parametrize("status", [301, 400, 401, 404])
async def test_other_non_2xx_answers_are_retried_too(
    bus: InMemoryBus, receiver: WebhookReceiver, status: int
) -> None:
    receiver.answer([status])
    sender = await started(bus, fast_settings(receiver.url))
    await WebhookEmitter(bus, persistent=False).emit([room_event("room.occupied", "r", now())])
    await receiver.wait_for(lambda rx: len(rx.delivered()) == 1)
    await sender.stop()
    assert [p.status for p in receiver.posts] == [status, 200]


async def test_a_refused_connection_is_retried_until_the_receiver_listens(
    bus: InMemoryBus,
) -> None:
    receiver = WebhookReceiver(SECRET)  # not started: connections are refused
    retries = metric("roomcast_webhook_retries_total")
    sender = await started(bus, fast_settings(receiver.url))
    await WebhookEmitter(bus, persistent=False).emit([room_event("room.occupied", "r", now())])
    await until(lambda: metric("roomcast_webhook_retries_total") >= retries + 3)
    await receiver.start()
    try:
        await receiver.wait_for(lambda rx: len(rx.delivered()) == 1)
    finally:
        await sender.stop()
        await receiver.stop()
    assert receiver.verified()


async def test_nothing_is_lost_while_the_receiver_is_down_for_a_while(
    bus: InMemoryBus, receiver: WebhookReceiver
) -> None:
    sender = await started(bus, fast_settings(receiver.url, webhook_concurrency=3))
    emitter = WebhookEmitter(bus, persistent=False)
    await emitter.emit([message_posted(chat(0))])
    await receiver.wait_for(lambda rx: len(rx.delivered()) == 1)
    await receiver.stop()
    sent = {message_posted(chat(0)).id}
    for n in range(1, 30):
        event = message_posted(chat(n))
        sent.add(event.id)
        await emitter.emit([event])
    await receiver.start()
    await receiver.wait_for(lambda rx: rx.event_ids() == sent)
    await sender.stop()
    assert receiver.verified()


async def test_a_stopped_sender_leaves_its_retries_to_the_next_one(
    bus: InMemoryBus, receiver: WebhookReceiver
) -> None:
    receiver.answer([500] * 1000)
    first = await started(bus, fast_settings(receiver.url, webhook_retry_max=0.02))
    await WebhookEmitter(bus, persistent=False).emit([room_event("room.occupied", "r", now())])
    await receiver.wait_for(lambda rx: len(rx.posts) >= 2)
    await first.stop()
    receiver.script.clear()
    second = await started(bus, fast_settings(receiver.url))
    await receiver.wait_for(lambda rx: len(rx.delivered()) == 1)
    await second.stop()
    assert [p.status for p in receiver.posts][-1] == 200


async def test_a_post_failing_past_the_hold_goes_back_to_the_queue_as_a_new_message(
    bus: InMemoryBus, receiver: WebhookReceiver
) -> None:
    receiver.answer([500] * 10_000)
    requeued = metric("roomcast_webhook_requeued_total")
    sender = WebhookSender(bus, fast_settings(receiver.url), hold=0.05, persistent=False)
    await sender.start()
    event = room_event("room.occupied", "held", now())
    await WebhookEmitter(bus, persistent=False).emit([event])
    await until(lambda: metric("roomcast_webhook_requeued_total") >= requeued + 2)
    receiver.script.clear()
    await receiver.wait_for(lambda rx: len(rx.delivered()) == 1)
    await sender.stop()
    assert receiver.event_ids() == {event.id}
    assert len({p.body for p in receiver.posts}) == 1  # the same body, each time


async def test_events_older_than_the_give_up_age_are_dropped_and_counted(
    bus: InMemoryBus, receiver: WebhookReceiver
) -> None:
    receiver.answer([500] * 1000)
    gave_up = metric("roomcast_webhook_dropped_total", reason="gave_up")
    sender = await started(bus, fast_settings(receiver.url, webhook_give_up_seconds=60))
    old = room_event("room.occupied", "old", now() - 61_000)
    fresh = room_event("room.occupied", "fresh", now())
    emitter = WebhookEmitter(bus, persistent=False)
    await emitter.emit([old])
    await until(lambda: metric("roomcast_webhook_dropped_total", reason="gave_up") > gave_up)
    receiver.script.clear()
    await emitter.emit([fresh])
    await receiver.wait_for(lambda rx: len(rx.delivered()) == 1)
    await sender.stop()
    assert [e["room"] for e in receiver.events()] == ["fresh"]  # the old one is not retried
    assert [p.status for p in receiver.posts if "old" in p.body.decode()] == [500]


async def test_a_body_that_is_no_webhook_is_rejected_not_posted(
    bus: InMemoryBus, receiver: WebhookReceiver
) -> None:
    malformed = metric("roomcast_webhook_dropped_total", reason="malformed")
    sender = await started(bus, fast_settings(receiver.url))
    await bus.publish(ROUTING_KEY, b'{"events": "no"}')
    await WebhookEmitter(bus, persistent=False).emit([room_event("room.occupied", "r", now())])
    await receiver.wait_for(lambda rx: len(rx.delivered()) == 1)
    await sender.stop()
    assert metric("roomcast_webhook_dropped_total", reason="malformed") == malformed + 1
    assert len(receiver.posts) == 1


async def test_the_outbox_keeps_events_through_a_bus_outage(bus: InMemoryBus) -> None:
    received: list[bytes] = []

    async def handler(message: Any) -> None:
        received.append(message.body)

    await bus.consume("outbox-test", ["webhook.*"], handler)
    outbox = WebhookOutbox(WebhookEmitter(bus, persistent=False), retry_first=0.01)
    task = asyncio.create_task(outbox.run())
    try:
        async with bus.outage():
            outbox.put([room_event("room.occupied", "r", now())])
            outbox.put([room_event("member.joined", "r", now(), "a")])
            await asyncio.sleep(0.05)  # it tries, and fails, meanwhile
            assert received == [] and outbox.pending == 2
        await until(lambda: len(received) == 2)
    finally:
        task.cancel()
    kinds = [WebhookPayload.model_validate_json(b).events[0].type for b in received]
    assert kinds == ["room.occupied", "member.joined"]
    assert outbox.pending == 0


def test_a_full_outbox_drops_its_oldest_events_and_counts_them(bus: InMemoryBus) -> None:
    dropped = metric("roomcast_webhook_outbox_dropped_total")
    outbox = WebhookOutbox(WebhookEmitter(bus, persistent=False), limit=3)
    for n in range(5):
        outbox.put([room_event("room.occupied", f"r{n}", now())])
    assert outbox.pending == 3
    assert metric("roomcast_webhook_outbox_dropped_total") == dropped + 2


# the whole system -------------------------------------------------------------------------
async def test_roomcast_posts_occupancy_membership_and_messages(
    receiver: WebhookReceiver,
) -> None:
    settings = {
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_retry_first": 0.01,
        "webhook_retry_max": 0.05,
    }
    async with running(**settings) as server:
        alice = await ChatClient.connect(server.url)
        try:
            await alice.join("alice", "lobby")
            sent = await alice.say("lobby", "hello hooks")
            await alice.request("userLeave", {"room": "lobby"})
            await receiver.wait_for(
                lambda rx: any(e["type"] == "room.vacated" for e in rx.events())
            )
        finally:
            await alice.close()
    # POSTs are not ordered among themselves; the events of one presence batch are
    posts = [[(e["type"], e.get("username")) for e in p.events] for p in receiver.delivered()]
    assert sorted(posts) == [
        [("member.left", "alice"), ("room.vacated", None)],
        [("message.posted", None)],
        [("room.occupied", None), ("member.joined", "alice")],
    ]
    (posted,) = [e for e in receiver.events() if e["type"] == "message.posted"]
    assert posted["message"] == sent and posted["room"] == "lobby"
    assert receiver.verified()


async def test_the_openapi_document_describes_the_webhooks_as_they_are_sent() -> None:
    from jsonschema import Draft202012Validator

    async with running() as server, httpx.AsyncClient(base_url=server.http) as http:
        document = (await http.get("/openapi.json")).json()
    post = document["webhooks"]["roomcastEvents"]["post"]
    assert [p["name"] for p in post["parameters"]] == [signing.HEADER]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    validator = Draft202012Validator({"$ref": ref, "components": document["components"]})
    sent = [
        WebhookPayload(events=[message_posted(chat(1))]),
        WebhookPayload(events=[room_event("member.joined", "r", now(), "alice")]),
    ]
    for payload in sent:
        validator.validate(orjson.loads(payload.encode()))
    wrong: dict[str, Any]
    for wrong in (
        {"events": []},
        {"events": [{"id": "x", "type": "boom", "time": 1, "room": "r"}]},
    ):
        assert not validator.is_valid(wrong)


async def test_history_requeues_a_message_whose_event_was_not_published(
    bus: InMemoryBus,
) -> None:
    from roomcast.history.service import HistoryService
    from roomcast.shared.bus import BusUnavailableError
    from roomcast.shared.frames import encode_event
    from roomcast.shared.store.memory import InMemoryMessageStore
    from roomcast.webhooks.events import PATTERNS

    class FlakyEmitter(WebhookEmitter):
        """The broker refuses the first publish."""

        failures = 1

        async def emit(self, events: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise BusUnavailableError("broker away (test)")
            await super().emit(events)

    received: list[WebhookPayload] = []

    async def collect(message: Any) -> None:
        received.append(WebhookPayload.model_validate_json(message.body))

    await bus.consume("webhook-collector", PATTERNS, collect)
    store = InMemoryMessageStore()
    history = HistoryService(
        bus, store, load_settings(), webhooks=FlakyEmitter(bus, persistent=False)
    )
    await history.start()
    try:
        message = chat(1)
        frame = encode_event("updateChat", message.wire(), room=message.room)
        await bus.publish("room.main.updateChat", frame.encode(), persistent=True)
        await until(lambda: len(received) >= 1)
    finally:
        await history.stop()
    assert [p.events[0].message.id for p in received if p.events[0].message] == [message.id]
    assert [m.id for m in await store.newest("main", 10)] == [message.id]  # stored once


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({}, "ROOMCAST_WEBHOOK_URL: is required to send webhooks"),
        (
            {"ROOMCAST_WEBHOOK_URL": "http://127.0.0.1:9/hook"},
            "ROOMCAST_WEBHOOK_SECRET: is required with ROOMCAST_WEBHOOK_URL",
        ),
    ],
)
def test_roomcast_webhooks_without_its_settings_stops_with_one_line(
    env: dict[str, str], error: str
) -> None:
    """Before it connects to anything: the command, as an operator runs it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    done = subprocess.run(
        [sys.executable, "-m", "roomcast", "webhooks", "--port", "0"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"roomcast: error: {error}")


async def test_roomcast_dev_with_a_url_but_no_secret_does_not_start() -> None:
    with pytest.raises(ConfigError, match="ROOMCAST_WEBHOOK_SECRET: is required"):
        async with running(webhook_url="http://127.0.0.1:9/hook"):
            pass

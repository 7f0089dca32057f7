"""Stage timestamps (`roomcast.shared.bus.trace`, ROOMCAST_TRACE_STAGES): what is stamped, what
each delivery records per stage, that nothing is stamped or recorded when tracing is off, and the
bench's per-stage percentiles. No timing assertions: stages are checked by count and by the
timestamps the test itself wrote."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import REGISTRY

from roomcast.bench import deploy, report
from roomcast.bench.stats import stage_percentiles_ms, summarize_system
from roomcast.shared.bus import Message, trace
from roomcast.shared.topics import Header
from tests.support.chat_client import ChatClient
from tests.support.inprocess import Server

pytestmark = pytest.mark.unit

MS = 1_000_000  # ns


def _count(stage: str) -> float:
    return REGISTRY.get_sample_value("roomcast_stage_seconds_count", {"stage": stage}) or 0.0


def _sum(stage: str) -> float:
    return REGISTRY.get_sample_value("roomcast_stage_seconds_sum", {"stage": stage}) or 0.0


@pytest.mark.parametrize(
    ("raw", "on"),
    [(None, False), ("", False), ("0", False), ("no", False), ("1", True), (" TRUE ", True)],
)
def test_the_setting_turns_tracing_on_only_when_set_to_yes(raw: str | None, on: bool) -> None:
    assert trace.enabled(raw) is on


async def test_a_traced_delivery_records_each_stage_from_its_headers() -> None:
    handled: list[Message] = []

    async def handler(message: Message) -> None:
        handled.append(message)

    before = {stage: (_count(stage), _sum(stage)) for stage in trace.STAGES}
    received = 1_000 * MS  # far in the past: every stage up to the hand-off is known exactly
    headers = {
        Header.TRACE_RECEIVED: str(received),
        Header.TRACE_PUBLISHED: str(received + 2 * MS),
        Header.TRACE_DELIVERED: str(received + 5 * MS),
    }
    message = Message("room.r.updateChat", b"x", headers)
    await trace.timed(handler)(message)
    assert handled == [message]
    for stage in ("handle", "broker", "inbox", "relay", "gateway"):
        assert _count(stage) == before[stage][0] + 1, stage
    assert _count("confirm") == before["confirm"][0]  # a receiver confirms nothing
    assert _sum("handle") - before["handle"][1] == pytest.approx(0.002)
    assert _sum("broker") - before["broker"][1] == pytest.approx(0.003)


async def test_an_untraced_or_badly_stamped_delivery_is_handled_and_records_nothing() -> None:
    handled: list[Message] = []

    async def handler(message: Message) -> None:
        handled.append(message)

    before = {stage: _count(stage) for stage in trace.STAGES}
    plain = Message("room.r.updateChat", b"x", {Header.MESSAGE_ID: "m1"})
    bad = Message("room.r.updateChat", b"y", {Header.TRACE_PUBLISHED: "soon"})
    garbled = Message(
        "room.r.updateChat",
        b"z",
        {Header.TRACE_RECEIVED: "1", Header.TRACE_PUBLISHED: "x", Header.TRACE_DELIVERED: ""},
    )
    for message in (plain, bad, garbled):
        await trace.timed(handler)(message)
    assert handled == [plain, bad, garbled]
    assert {s: _count(s) for s in ("handle", "broker", "inbox")} == {
        s: before[s] for s in ("handle", "broker", "inbox")
    }
    # the garbled one had a readable receipt: only the stages it can tell are counted
    assert _count("relay") == before["relay"] + 1
    assert _count("gateway") == before["gateway"] + 1


def test_only_a_traced_publish_is_stamped_published() -> None:
    plain = {Header.MESSAGE_ID: "m1"}
    assert trace.stamp_published(plain) is None
    assert plain == {Header.MESSAGE_ID: "m1"}
    traced = {Header.TRACE_RECEIVED: "1"}
    published = trace.stamp_published(traced)
    assert published is not None
    assert traced[Header.TRACE_PUBLISHED] == str(published)
    before = _count("confirm")
    trace.confirmed(published)
    assert _count("confirm") == before + 1


def test_delivered_adds_its_stamp_and_keeps_the_rest() -> None:
    message = Message("room.r.e", b"body", {"a": "1"}, "reply", "corr")
    stamped = trace.delivered(message)
    assert int(stamped.headers[Header.TRACE_DELIVERED]) > 0
    assert {k: v for k, v in stamped.headers.items() if k != Header.TRACE_DELIVERED} == {"a": "1"}
    assert (stamped.routing_key, stamped.body, stamped.reply_to, stamped.correlation_id) == (
        "room.r.e",
        b"body",
        "reply",
        "corr",
    )
    assert message.headers == {"a": "1"}  # the original is not changed


def _watch_chat_headers(server: Server, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    bus = server.system.gateway.bus
    publish = bus.publish
    seen: list[dict[str, str]] = []

    async def watching(
        key: str, body: bytes, *, headers: Mapping[str, str] | None = None, **kw: Any
    ) -> None:
        if key.endswith(".updateChat"):
            seen.append(dict(headers or {}))
        await publish(key, body, headers=headers, **kw)

    monkeypatch.setattr(bus, "publish", watching)
    return seen


async def _chat(alice: ChatClient) -> None:
    data = {"username": "alice", "body": "hi", "time": 0, "room": "main"}
    await alice.send("updateChat", data, "c1")
    await alice.wait_for(lambda f: f["event"] == "ack" and f.get("ref") == "c1")


async def test_a_chat_message_carries_its_receipt_time_only_when_traced(
    server: Server, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice: ChatClient = await connect()
    await alice.join("alice")
    seen = _watch_chat_headers(server, monkeypatch)
    await _chat(alice)
    assert not any(k.startswith("t-") for k in seen[0])  # off: nothing stamped
    monkeypatch.setattr(trace, "ENABLED", True)
    data = {"username": "alice", "body": "again", "time": 0, "room": "main"}
    await alice.send("updateChat", data, "c2")
    await alice.wait_for(lambda f: f["event"] == "ack" and f.get("ref") == "c2")
    assert int(seen[1][Header.TRACE_RECEIVED]) > 0
    assert seen[1][Header.MESSAGE_ID]  # the routing headers are all still there
    assert seen[1][Header.ORIGIN]


def _metrics(stages: dict[str, list[tuple[str, float]]]) -> str:
    lines = []
    for stage, buckets in stages.items():
        for le, n in buckets:
            lines.append(f'roomcast_stage_seconds_bucket{{le="{le}",stage="{stage}"}} {n}')
    return "\n".join(lines) + "\n"


def test_bench_stage_percentiles_per_stage_between_two_readings() -> None:
    before = _metrics({"broker": [("0.001", 5), ("0.002", 5), ("+Inf", 5)]})
    after = _metrics(
        {
            "broker": [("0.001", 5), ("0.002", 105), ("+Inf", 105)],
            "inbox": [("0.001", 10), ("0.002", 10), ("+Inf", 10)],
            "confirm": [("0.001", 0), ("+Inf", 0)],
        }
    )
    other_gateway = _metrics({"inbox": [("0.001", 0), ("0.002", 10), ("+Inf", 10)]})
    stages = stage_percentiles_ms([before, ""], [after, other_gateway])
    assert list(stages) == ["broker", "inbox"]  # in path order; nothing traced: left out
    assert stages["broker"]["count"] == 100
    assert stages["broker"]["p50"] == 2.0
    assert stages["inbox"]["count"] == 20
    assert stages["inbox"]["p50"] == 1.0
    assert stages["inbox"]["p99"] == 2.0
    assert stages["inbox"]["max"] == 2.0
    assert stages["broker"]["max"] == 2.0
    assert stage_percentiles_ms([""], [""]) == {}


def test_bench_report_has_a_row_per_traced_stage_and_dashes_where_none() -> None:
    entry = summarize_system([], window_s=1.0, server={})
    traced = {**entry, "gateway_stages_ms": {"broker": {"p50": 2.0, "p99": 8.0, "max": 50.0}}}
    result = {
        "params": {"mode": "chat", "scenario": "fanout"},
        "systems": {"roomcast": traced, "socketio": entry},
        "ratio": {},
    }
    rows = {label: cells for label, cells, _ in report.rows(result)}
    assert rows["stage broker p50/p99/max (ms)"] == ["≤2 / ≤8 / ≤50", "-"]
    assert not any(
        label.startswith("stage")
        for label, _, _ in report.rows({**result, "systems": {"socketio": entry}})
    )


def test_the_bench_passes_the_trace_setting_on_to_roomcast_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROOMCAST_TRACE_STAGES", "1")
    monkeypatch.setenv("ROOMCAST_SECRET", "from-the-shell")
    env = deploy._base_env()
    assert env["ROOMCAST_TRACE_STAGES"] == "1"
    assert "ROOMCAST_SECRET" not in env

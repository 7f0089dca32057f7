"""`roomcast bench`'s arithmetic and plans: histograms, summaries, ratios, the JSON shape, the
client plan, and the load generator's frame parsing. No servers, no timing."""

from __future__ import annotations

import json
import random
import struct
import time

import pytest

from roomcast.bench import report
from roomcast.bench.scenarios import PRESETS, build_plan, resolve
from roomcast.bench.stats import (
    SUB,
    SYSTEM_KEYS,
    Histogram,
    bucket_bounds,
    bucket_of,
    bucket_percentiles_ms,
    comparison,
    merge_timelines,
    prometheus_buckets,
    ratio,
    schema_problems,
    summarize_system,
    summary_ms,
)
from roomcast.bench.worker import Meter, RoomcastClient, SocketIOClient
from roomcast.bench.wsclient import WSClient, apply_mask

pytestmark = pytest.mark.unit


# histograms -------------------------------------------------------------------------------------
def test_buckets_are_exact_below_128_and_within_one_sixty_fourth_above() -> None:
    for value in range(128):
        assert bucket_bounds(bucket_of(value)) == (value, value)
    previous = bucket_of(127)
    for value in [*range(128, 5000), 10**6, 2**40 + 12345]:
        index = bucket_of(value)
        low, high = bucket_bounds(index)
        assert low <= value <= high
        assert (high - low + 1) / low <= 1 / SUB + 1e-12
        if value < 5000:
            assert index in (previous, previous + 1)  # contiguous buckets
            previous = index


def test_percentiles_of_a_known_distribution() -> None:
    hist = Histogram()
    for value in range(1, 10_001):  # 1..10000 µs, uniform
        hist.record(value)
    assert hist.count == 10_000 and hist.min == 1 and hist.max == 10_000
    for q, exact in ((50, 5000), (90, 9000), (99, 9900)):
        value = hist.percentile(q)
        assert value is not None
        assert abs(value - exact) / exact < 0.02
    assert hist.percentile(100) == pytest.approx(10_000, rel=0.02)
    assert hist.mean == pytest.approx(5000.5)


def test_a_single_value_is_reported_as_itself() -> None:
    hist = Histogram()
    hist.record(12_345)
    assert hist.percentile(50) == 12_345
    assert summary_ms(hist) == {"p50": 12.345, "p90": 12.345, "p99": 12.345, "max": 12.345}


def test_negative_values_count_as_zero() -> None:
    hist = Histogram()
    hist.record(-5)
    assert hist.min == 0 and hist.max == 0 and hist.percentile(50) == 0


def test_merging_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(8, 1.5)) for _ in range(5000)]
    one, a, b = Histogram(), Histogram(), Histogram()
    for i, v in enumerate(values):
        one.record(v)
        (a if i % 3 else b).record(v)
    a.merge(b)
    assert a.counts == one.counts
    assert (a.count, a.total, a.min, a.max) == (one.count, one.total, one.min, one.max)
    empty = Histogram()
    empty.merge(Histogram())
    assert empty.count == 0


def test_histograms_survive_json() -> None:
    hist = Histogram()
    for v in (1, 500, 70_000, 3_000_000):
        hist.record(v)
    back = Histogram.from_dict(json.loads(json.dumps(hist.to_dict())))
    assert back.counts == hist.counts and back.max == hist.max and back.min == hist.min
    assert back.percentile(99) == hist.percentile(99)


def test_an_empty_histogram_summarizes_to_nones() -> None:
    assert summary_ms(Histogram()) == {"p50": None, "p90": None, "p99": None, "max": None}
    assert Histogram().percentile(50) is None


# summaries, ratios, the JSON shape ------------------------------------------------------------------
def _worker(
    latencies_us: list[int], delivered: int, acks: int, **extra: object
) -> dict[str, object]:
    lat, join, ack = Histogram(), Histogram(), Histogram()
    for v in latencies_us:
        lat.record(v)
    join.record(20_000)
    ack.record(1_000)
    return {
        "latency": lat.to_dict(),
        "join": join.to_dict(),
        "ack": ack.to_dict(),
        "delivered": delivered,
        "delivered_all": delivered,
        "acks": acks,
        "sent": acks,
        "events": 0,
        "joins": 1,
        "errors": {"closed_1013": 1},
        "timeline": [1, 2, 3],
        "cpu_s": 0.5,
        "phase_s": 5.0,
        **extra,
    }


def test_summarize_system_adds_workers_up() -> None:
    workers = [_worker([1000] * 99 + [50_000], 800, 40), _worker([2000] * 100, 1200, 60)]
    entry = summarize_system(
        workers,
        window_s=4.0,
        server={"server_cpu_s": 2.0, "server_rss_mb": 100.04, "extra": "kept"},
        expected_deliveries=2100,
    )
    assert set(SYSTEM_KEYS) <= set(entry)
    assert entry["delivered_per_s"] == 500.0  # (800 + 1200) / 4
    assert entry["acks_per_s"] == 25.0
    assert entry["errors"] == 2 and entry["errors_by_kind"] == {"closed_1013": 2}
    assert entry["latency_ms"]["p50"] == pytest.approx(2.0, rel=0.02)
    assert entry["latency_ms"]["max"] == 50.0
    assert entry["join_ms"]["p50"] == pytest.approx(20.0, rel=0.02)
    assert entry["loadgen_cpu_s"] == 1.0
    assert entry["loadgen_cpu_pct"] == 10.0  # 1 s over 5 s in each of 2 processes
    assert entry["timeline"] == [2, 4, 6]
    assert entry["undelivered"] == 100
    assert entry["server_rss_mb"] == 100.0 and entry["extra"] == "kept"
    assert entry["server_cpu_us_per_delivery"] == 1000.0  # 2 s / 2000 deliveries


def test_summarize_system_with_no_traffic() -> None:
    entry = summarize_system([], window_s=0.0, server={})
    assert entry["delivered_per_s"] == 0.0 and entry["errors"] == 0
    assert entry["latency_ms"]["p99"] is None and entry["undelivered"] is None
    assert entry["loadgen_cpu_pct"] is None


def test_ratio() -> None:
    assert ratio(10.0, 4.0) == 2.5
    assert ratio(None, 4.0) is None and ratio(1.0, None) is None and ratio(1.0, 0) is None


def test_comparison_is_roomcast_over_the_peer() -> None:
    def system(delivered: float, p99: float | None) -> dict[str, object]:
        summary = {"p50": 1.0, "p90": 2.0, "p99": p99, "max": 9.0}
        return {
            "delivered_per_s": delivered,
            "latency_ms": summary,
            "join_ms": summary,
            "server_cpu_s": 1.0,
            "server_rss_mb": 2.0,
        }

    block = comparison({"roomcast": system(3000.0, 4.0), "socketio": system(1000.0, 8.0)})
    assert block["delivered_per_s"] == 3.0
    assert block["latency_ms.p99"] == 0.5 and block["latency_ms"] == {"p99": 0.5}
    missing = comparison({"roomcast": system(3000.0, None), "socketio": system(1000.0, 8.0)})
    assert missing["latency_ms.p99"] is None
    assert comparison({"roomcast": system(1.0, 1.0)})["delivered_per_s"] is None


def test_schema_problems() -> None:
    entry = summarize_system([_worker([1000], 10, 1)], window_s=1.0, server={})
    assert schema_problems({"systems": {"roomcast": entry}}) == []
    two = {"systems": {"roomcast": entry, "socketio": entry}}
    assert schema_problems(two) == ["no 'ratio' object"]
    two["ratio"] = comparison(two["systems"])  # type: ignore[arg-type]
    assert schema_problems(two) == []
    broken = dict(entry)
    del broken["join_ms"]
    broken["errors"] = 1.5
    problems = schema_problems({"systems": {"roomcast": broken}})
    assert "systems.roomcast: no 'join_ms'" in problems
    assert "systems.roomcast.errors: not an integer" in problems
    assert schema_problems({}) == ["no 'systems' object"]


def test_merge_timelines_pads_the_shorter() -> None:
    assert merge_timelines([[1, 2], [10, 20, 30], []]) == [11, 22, 30]


def test_prometheus_histogram_percentiles() -> None:
    def text(counts: list[int]) -> str:
        bounds = ["0.001", "0.002", "0.005", "+Inf"]
        lines = ["# HELP m x", "# TYPE m histogram"]
        lines += [f'm_bucket{{le="{b}"}} {n}.0' for b, n in zip(bounds, counts, strict=True)]
        return "\n".join([*lines, "m_count 1.0", 'other_bucket{le="1.0"} 5.0'])

    before = prometheus_buckets(text([10, 10, 10, 10]), "m")
    assert before == {0.001: 10.0, 0.002: 10.0, 0.005: 10.0, float("inf"): 10.0}
    after = prometheus_buckets(text([60, 100, 109, 110]), "m")
    block = bucket_percentiles_ms(before, after)  # 100 new: 50 ≤1 ms, 40 ≤2, 9 ≤5, 1 more
    assert block == {"count": 100.0, "p50": 1.0, "p90": 2.0, "p99": 5.0}
    assert bucket_percentiles_ms(after, after)["p50"] is None


def test_report_rows_for_a_comparison() -> None:
    entry = summarize_system([_worker([1000], 10, 1)], window_s=1.0, server={})
    systems = {"roomcast": entry, "socketio": entry}
    result = {
        "params": {"mode": "chat", "scenario": "fanout"},
        "systems": systems,
        "ratio": comparison(systems),
    }
    rows = {label: (cells, r) for label, cells, r in report.rows(result)}
    assert rows["delivered msgs/s"] == (["10.0", "10.0"], "1.00x")
    assert rows["latency p99 (ms)"][1] == "1.00x"
    assert rows["errors"] == (["1", "1"], "")


# scenarios and the plan -----------------------------------------------------------------------------
def test_presets_keep_their_room_size_when_clients_change() -> None:
    fanout = resolve("fanout")
    assert (fanout.clients, fanout.rooms, fanout.senders, fanout.gateways) == (1000, 10, 20, 2)
    small = resolve("fanout", clients=20)
    assert (small.rooms, small.senders) == (1, 2)
    chatty = resolve("chatty", clients=50)
    assert (chatty.rooms, chatty.senders) == (5, 50)
    assert resolve("idle").gateways == 1 and resolve("idle").clients == 10_000
    storm = resolve("join-storm", rooms=3, clients=30)
    assert storm.senders == 0 and storm.history == PRESETS["join-storm"].history
    assert resolve("fanout", rate=0).rate == 0.0
    with pytest.raises(ValueError):
        resolve("fanout", senders=0)
    with pytest.raises(ValueError):
        resolve("fanout", duration=0)


def test_plan_spreads_rooms_over_gateways_and_workers() -> None:
    config = resolve("fanout", clients=400, rooms=4, gateways=2, workers=2)
    urls = ["ws://127.0.0.1:1", "ws://127.0.0.1:2"]
    plan = build_plan(config, urls, "abc")
    assert len(plan.clients) == 400 and not plan.loaders
    assert plan.room_sizes() == {f"bench-abc-{r}": 100 for r in range(4)}
    assert len({c.username for c in plan.clients}) == 400
    senders = [c for c in plan.clients if c.role == "sender"]
    assert len(senders) == 8
    for room in plan.room_sizes():
        members = [c for c in plan.clients if c.room == room]
        assert {c.gateway for c in members} == {0, 1}
        assert sum(c.role == "sender" for c in members) == 2
    shares = [plan.for_worker(w, 2) for w in range(2)]
    assert sorted(c.index for share in shares for c in share) == list(range(400))
    assert abs(len(shares[0]) - len(shares[1])) <= 4


def test_join_storm_plan_has_one_loader_per_room() -> None:
    config = resolve("join-storm", clients=50, rooms=5)
    plan = build_plan(config, ["ws://127.0.0.1:1"], "x")
    assert [c.room for c in plan.loaders] == [f"bench-x-{r}" for r in range(5)]
    assert all(c.role == "loader" for c in plan.loaders)


# the load generator's parsing -----------------------------------------------------------------------
class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _server_frame(text: str) -> bytes:
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    return struct.pack("!BBH", 0x81, 126, n) + payload


async def test_frames_are_parsed_across_reads_and_pings_answered() -> None:
    got: list[str] = []
    ws = WSClient("h", 1, "/", lambda text, now: got.append(text), offer_deflate=False)
    ws._upgraded = True
    ws._transport = _Transport()  # type: ignore[assignment]
    stream = _server_frame("a") + _server_frame("b" * 300) + b"\x89\x02hi"
    for i in range(0, len(stream), 7):  # in small pieces
        ws.data_received(stream[i : i + 7])
    assert got == ["a", "b" * 300]
    pong = ws._transport.written[-1]  # type: ignore[attr-defined]
    assert pong[0] == 0x8A and pong[1] == 0x82  # masked pong with the ping's 2 bytes
    assert apply_mask(pong[6:], pong[2:6]) == b"hi"


async def test_roomcast_lines_are_counted() -> None:
    meter = Meter()
    spec = build_plan(resolve("fanout", clients=2), ["ws://127.0.0.1:1"], "t").clients[0]
    client = RoomcastClient(spec, meter, 64)
    now = time.monotonic_ns()
    meter.start(now - 1_000_000_000, 0.0, 10.0)
    client.pending[3] = now - 500
    sent = now - 2_000_000
    text = "\n".join(
        [
            f'{{"event":"updateChat","room":"r","data":{{"id":"1","username":"u","body":"t={sent}|xx","time":1,"room":"r"}}}}',
            '{"event":"activeUsers","room":"r","data":["u"]}',
            f'{{"event":"ack","ref":"3","data":{{"body":"t={sent}|x"}}}}',
            '{"event":"error","ref":"4","data":{"code":"rate_limited","message":"slow down"}}',
        ]
    )
    client.pending[4] = now - 500
    client.on_text(text, now)
    assert meter.delivered == 1 and meter.delivered_all == 1
    assert meter.latency.max == 2000  # µs
    assert meter.acks == 1 and meter.events == 1
    assert meter.errors == {"rate_limited": 1} and not client.pending


async def test_socketio_packets_are_counted() -> None:
    meter = Meter()
    spec = build_plan(resolve("fanout", clients=2), ["ws://127.0.0.1:1"], "t").clients[0]
    client = SocketIOClient(spec, meter, 64)
    sent_frames: list[str] = []
    client.send = lambda text: sent_frames.append(text) or True  # type: ignore[method-assign]
    now = time.monotonic_ns()
    meter.start(now - 1_000_000_000, 0.0, 10.0)
    client.on_text('0{"sid":"x","pingInterval":25000}', now)
    client.on_text('40{"sid":"y"}', now)
    assert sent_frames == ["40"] and client.connected.done()
    client.on_text("2", now)
    assert sent_frames[-1] == "3"
    sent = now - 3_000_000
    client.on_text(f'42["updateChat",{{"body": "t={sent}|x", "room": "r"}}]', now)
    client.pending[7] = now - 100
    client.on_text('437[{"id": "m", "body": "t=1|x"}]', now)
    client.pending[8] = now - 100
    client.on_text('438[{"error": {"code": "not_joined", "message": "no"}}]', now)
    assert meter.delivered == 1 and meter.latency.max == 3000
    assert meter.acks == 1 and meter.errors == {"not_joined": 1}

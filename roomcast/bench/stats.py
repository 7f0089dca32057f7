"""The bench's arithmetic, free of I/O: latency histograms, throughput over time, the
per-system summary that goes into the JSON, and the ratios of roomcast over its peer.

Latencies are recorded in integer microseconds in a log-linear histogram (HDR-like): exact
below 128 µs, then 64 buckets per power of two, so every recorded value is known to within
1.6 %; histograms from several load-generator processes merge by adding counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SUB_BITS = 6
SUB = 1 << SUB_BITS  # buckets per power of two
LINEAR = 2 * SUB  # values below this are their own bucket
PERCENTILES = (50.0, 90.0, 99.0)
SUMMARY_KEYS = ("p50", "p90", "p99", "max")
TIMELINE_BIN_S = 0.25

# What the JSON holds for every system (docs/performance.md, "JSON").
SYSTEM_KEYS = (
    "delivered_per_s",
    "acks_per_s",
    "errors",
    "latency_ms",
    "join_ms",
    "server_cpu_s",
    "server_rss_mb",
    "loadgen_cpu_s",
)


def bucket_of(value: int) -> int:
    """The bucket index of a non-negative integer (negative values count as 0)."""
    if value < LINEAR:
        return max(value, 0)
    shift = value.bit_length() - SUB_BITS - 1
    return LINEAR + (shift - 1) * SUB + ((value >> shift) - SUB)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and largest value that fall in bucket `index`."""
    if index < LINEAR:
        return index, index
    shift = (index - LINEAR) // SUB + 1
    mantissa = (index - LINEAR) % SUB + SUB
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class Histogram:
    """Counts of integer values (the bench uses microseconds), mergeable and picklable."""

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.max = 0
        self.min = 0

    def record(self, value: int) -> None:
        if value < 0:
            value = 0
        index = value if value < LINEAR else bucket_of(value)
        counts = self.counts
        counts[index] = counts.get(index, 0) + 1
        if self.count == 0 or value < self.min:
            self.min = value
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value

    def merge(self, other: Histogram) -> None:
        if other.count == 0:
            return
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, q: float) -> float | None:
        """The value at percentile `q` (0 to 100): the middle of its bucket, within the
        recorded minimum and maximum; None when nothing was recorded."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                low, high = bucket_bounds(index)
                middle = (low + high) / 2
                return float(min(max(middle, self.min), self.max))
        return float(self.max)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form (bucket indexes as strings)."""
        return {
            "counts": {str(k): v for k, v in sorted(self.counts.items())},
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        hist = cls()
        hist.counts = {int(k): int(v) for k, v in data.get("counts", {}).items()}
        hist.count = int(data.get("count", sum(hist.counts.values())))
        hist.total = int(data.get("total", 0))
        hist.min = int(data.get("min", 0))
        hist.max = int(data.get("max", 0))
        return hist

    def buckets(self) -> list[tuple[float, int]]:
        """(bucket middle, count) pairs in increasing order, for plotting."""
        return [(sum(bucket_bounds(i)) / 2, n) for i, n in sorted(self.counts.items())]


def merged(histograms: Iterable[Histogram]) -> Histogram:
    total = Histogram()
    for hist in histograms:
        total.merge(hist)
    return total


def summary_ms(hist: Histogram) -> dict[str, float | None]:
    """`{"p50", "p90", "p99", "max"}` in milliseconds from a histogram of microseconds;
    every value is None when nothing was recorded."""
    out: dict[str, float | None] = {}
    for q in PERCENTILES:
        value = hist.percentile(q)
        out[f"p{q:g}"] = None if value is None else round(value / 1000.0, 3)
    out["max"] = None if hist.count == 0 else round(hist.max / 1000.0, 3)
    return out


def merge_timelines(timelines: Iterable[Sequence[int]]) -> list[int]:
    """Add per-bin counts from several processes (bins of `TIMELINE_BIN_S`)."""
    total: list[int] = []
    for line in timelines:
        if len(line) > len(total):
            total.extend([0] * (len(line) - len(total)))
        for i, n in enumerate(line):
            total[i] += n
    return total


def rate(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 3)


def add_counts(maps: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for m in maps:
        for key, n in m.items():
            total[key] = total.get(key, 0) + n
    return dict(sorted(total.items()))


def summarize_system(
    workers: Sequence[Mapping[str, Any]],
    *,
    window_s: float,
    server: Mapping[str, Any],
    expected_deliveries: int | None = None,
) -> dict[str, Any]:
    """One system's entry under "systems" from its load-generator workers' results and the
    server measurements (`server_cpu_s`, `server_rss_mb` and any extra keys, copied as-is).

    A worker result holds histograms (`latency`, `join`, `ack`, as `Histogram.to_dict`),
    counts (`delivered` and `acks` inside the measured window, `delivered_all` for every
    message sent during the run, `joins`, `sent`, `events`), `errors` by kind, `timeline`
    (deliveries per bin) and `cpu_s` (its own CPU over the measured phase).
    """
    latency = merged(Histogram.from_dict(w["latency"]) for w in workers)
    join = merged(Histogram.from_dict(w["join"]) for w in workers)
    ack = merged(Histogram.from_dict(w["ack"]) for w in workers)
    errors_by_kind = add_counts(w.get("errors", {}) for w in workers)
    delivered = sum(int(w.get("delivered", 0)) for w in workers)
    delivered_all = sum(int(w.get("delivered_all", 0)) for w in workers)
    acks = sum(int(w.get("acks", 0)) for w in workers)
    loadgen_cpu = sum(float(w.get("cpu_s", 0.0)) for w in workers)
    phase_s = max((float(w.get("phase_s", 0.0)) for w in workers), default=0.0)
    undelivered = None
    if expected_deliveries is not None:
        undelivered = max(0, expected_deliveries - delivered_all)
    entry: dict[str, Any] = {
        "delivered_per_s": rate(delivered, window_s),
        "acks_per_s": rate(acks, window_s),
        "errors": sum(errors_by_kind.values()),
        "latency_ms": summary_ms(latency),
        "join_ms": summary_ms(join),
        "server_cpu_s": round(float(server.get("server_cpu_s", 0.0)), 3),
        "server_rss_mb": round(float(server.get("server_rss_mb", 0.0)), 1),
        "loadgen_cpu_s": round(loadgen_cpu, 3),
        # details beyond the required keys
        "errors_by_kind": errors_by_kind,
        "ack_ms": summary_ms(ack),
        "window_s": round(window_s, 3),
        "phase_s": round(phase_s, 3),
        "delivered": delivered,
        "acks": acks,
        "sent": sum(int(w.get("sent", 0)) for w in workers),
        "joins": sum(int(w.get("joins", 0)) for w in workers),
        "phase_joins": sum(int(w.get("phase_joins", 0)) for w in workers),
        "events": sum(int(w.get("events", 0)) for w in workers),
        "latency_samples": latency.count,
        "latency_mean_ms": None if latency.mean is None else round(latency.mean / 1000.0, 3),
        "expected_deliveries": expected_deliveries,
        "undelivered": undelivered,
        "loadgen_workers": len(workers),
        "loadgen_cpu_pct": round(100.0 * loadgen_cpu / (phase_s * len(workers)), 1)
        if phase_s > 0 and workers
        else None,
        "timeline_bin_s": TIMELINE_BIN_S,
        "timeline": merge_timelines(w.get("timeline", []) for w in workers),
        "latency_histogram_us": latency.to_dict(),
        "join_histogram_us": join.to_dict(),
    }
    for key, value in server.items():
        if key not in entry:
            entry[key] = value
    if delivered_all:
        # all the server's processes, over the whole phase, per message written to a socket
        entry["server_cpu_us_per_delivery"] = round(1e6 * entry["server_cpu_s"] / delivered_all, 2)
    return entry


def comparison(systems: Mapping[str, Mapping[str, Any]], peer: str = "socketio") -> dict[str, Any]:
    """The "ratio" block: roomcast over the peer for delivered_per_s and latency_ms.p99.

    The p99 ratio is given both flat (`"latency_ms.p99"`) and nested (`latency_ms.p99`);
    None when a side has no figure."""
    ours, theirs = systems.get("roomcast"), systems.get(peer)
    if ours is None or theirs is None:
        return {"delivered_per_s": None, "latency_ms.p99": None, "latency_ms": {"p99": None}}
    p99 = ratio(ours["latency_ms"]["p99"], theirs["latency_ms"]["p99"])
    return {
        "delivered_per_s": ratio(ours["delivered_per_s"], theirs["delivered_per_s"]),
        "latency_ms.p99": p99,
        "latency_ms": {"p99": p99},
        "join_ms.p99": ratio(ours["join_ms"]["p99"], theirs["join_ms"]["p99"]),
        "server_cpu_s": ratio(ours["server_cpu_s"], theirs["server_cpu_s"]),
        "server_rss_mb": ratio(ours["server_rss_mb"], theirs["server_rss_mb"]),
    }


def schema_problems(result: Mapping[str, Any]) -> list[str]:
    """What a result lacks against the documented JSON shape (empty when it is complete)."""
    problems: list[str] = []
    systems = result.get("systems")
    if not isinstance(systems, Mapping) or not systems:
        return ["no 'systems' object"]
    for name, entry in systems.items():
        for key in SYSTEM_KEYS:
            if key not in entry:
                problems.append(f"systems.{name}: no {key!r}")
        for key in ("latency_ms", "join_ms"):
            block = entry.get(key)
            if not isinstance(block, Mapping) or set(SUMMARY_KEYS) - set(block):
                problems.append(f"systems.{name}.{key}: not {{p50, p90, p99, max}}")
        for key in ("delivered_per_s", "acks_per_s", "server_cpu_s", "server_rss_mb"):
            if key in entry and not isinstance(entry[key], int | float):
                problems.append(f"systems.{name}.{key}: not a number")
        if "errors" in entry and not isinstance(entry["errors"], int):
            problems.append(f"systems.{name}.errors: not an integer")
    if len(systems) > 1:
        block = result.get("ratio")
        if not isinstance(block, Mapping):
            problems.append("no 'ratio' object")
        else:
            for key in ("delivered_per_s", "latency_ms.p99"):
                if key not in block:
                    problems.append(f"ratio: no {key!r}")
    return problems


def prometheus_counters(text: str, metric: str) -> dict[str, float]:
    """A Prometheus counter's samples `{labels: value}` (labels as written, `op="join",...`),
    from the text exposition format."""
    out: dict[str, float] = {}
    prefix = f"{metric}{{"
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, _, value = line[len(prefix) :].partition("} ")
            out[labels] = out.get(labels, 0.0) + float(value)
    return out


def prometheus_buckets(text: str, metric: str) -> dict[float, float]:
    """Cumulative bucket counts `{le: count}` of a Prometheus histogram (summed over label
    sets), from the text exposition format."""
    out: dict[float, float] = {}
    prefix = f"{metric}_bucket{{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, _, value = line[len(prefix) :].partition("} ")
        for part in labels.split(","):
            key, _, raw = part.partition("=")
            if key.strip() == "le":
                le = raw.strip().strip('"')
                bound = math.inf if le == "+Inf" else float(le)
                out[bound] = out.get(bound, 0.0) + float(value)
    return out


def prometheus_buckets_by(text: str, metric: str, label: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of a Prometheus histogram per value of `label`:
    `{value: {le: count}}`."""
    out: dict[str, dict[float, float]] = {}
    prefix = f"{metric}_bucket{{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        raw_labels, _, value = line[len(prefix) :].partition("} ")
        labels = {}
        for part in raw_labels.split(","):
            key, _, raw = part.partition("=")
            labels[key.strip()] = raw.strip().strip('"')
        le = labels.get("le")
        if le is None or label not in labels:
            continue
        bound = math.inf if le == "+Inf" else float(le)
        buckets = out.setdefault(labels[label], {})
        buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return out


def summed(texts: list[str], metric: str) -> dict[float, float]:
    """A histogram's cumulative buckets summed over several processes' /metrics texts."""
    total: dict[float, float] = {}
    for text in texts:
        for bound, n in prometheus_buckets(text, metric).items():
            total[bound] = total.get(bound, 0.0) + n
    return total


STAGE_METRIC = "roomcast_stage_seconds"  # roomcast.shared.bus.trace
STAGE_ORDER = ("handle", "broker", "inbox", "relay", "gateway", "confirm")


def stage_percentiles_ms(before: list[str], after: list[str]) -> dict[str, dict[str, float | None]]:
    """Per stage of `roomcast_stage_seconds` (the gateways' traced stages), p50/p90/p99 in ms
    between two readings of every gateway's /metrics; empty when nothing was traced."""

    def total(texts: list[str]) -> dict[str, dict[float, float]]:
        out: dict[str, dict[float, float]] = {}
        for text in texts:
            for stage, buckets in prometheus_buckets_by(text, STAGE_METRIC, "stage").items():
                mine = out.setdefault(stage, {})
                for bound, n in buckets.items():
                    mine[bound] = mine.get(bound, 0.0) + n
        return out

    start, end = total(before), total(after)
    order = [s for s in STAGE_ORDER if s in end] + sorted(set(end) - set(STAGE_ORDER))
    out: dict[str, dict[str, float | None]] = {}
    for stage in order:
        before_, after_ = start.get(stage, {}), end[stage]
        block = bucket_percentiles_ms(before_, after_)
        if block["count"]:
            # the slowest, as the first bound that holds them all (a tail a p99 can hide)
            count = block["count"] or 0.0
            bound = next(b for b in sorted(after_) if after_[b] - before_.get(b, 0.0) >= count)
            block["max"] = None if math.isinf(bound) else round(bound * 1000.0, 3)
            out[stage] = block
    return out


def bucket_percentiles_ms(
    before: Mapping[float, float], after: Mapping[float, float]
) -> dict[str, float | None]:
    """p50/p90/p99 from two readings of a cumulative histogram in seconds, as the upper bound
    of the bucket (in ms) the percentile falls in (None past the last finite bucket)."""
    bounds = sorted(after)
    delta = {b: after[b] - before.get(b, 0.0) for b in bounds}
    total = delta.get(math.inf, max(delta.values(), default=0.0))
    out: dict[str, float | None] = {"count": total}
    for q in PERCENTILES:
        key = f"p{q:g}"
        out[key] = None
        if total <= 0:
            continue
        for b in bounds:
            if delta[b] >= q / 100.0 * total:
                out[key] = None if math.isinf(b) else round(b * 1000.0, 3)
                break
    return out

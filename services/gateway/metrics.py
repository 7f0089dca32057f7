"""The gateway's Prometheus metrics (served at /metrics), all in one place: their names are
what dashboards and alerts depend on."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("roomcast_gateway_connections", "Open WebSocket connections")
FRAMES_IN = Counter("roomcast_gateway_frames_in_total", "Client frames received", ["event"])
FRAMES_OUT = Counter("roomcast_gateway_frames_out_total", "Events written to sockets", ["event"])
ERRORS = Counter("roomcast_gateway_errors_total", "Errors sent to clients", ["code"])
SLOW_CLOSES = Counter(
    "roomcast_gateway_slow_consumer_closes_total", "Sockets closed (1013) for not keeping up"
)
FANOUT = Histogram(
    "roomcast_gateway_fanout_seconds",
    "From publish to the event queued on every local socket of the room",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
HANDSHAKES_REFUSED = Counter(
    "roomcast_handshakes_refused_total", "WebSocket handshakes refused, by reason", ["reason"]
)
PING_TIMEOUTS = Counter(
    "roomcast_gateway_ping_timeouts_total",
    "Sockets closed because the peer answered neither a ping nor a close in time",
)
SHED = Counter(
    "roomcast_gateway_shed_total",
    "Room events that reached this gateway later than the send queue's age bound: not written; "
    "the room's local sockets were closed (1013) to recover with `since`",
)
READ_STATE_BATCH = Histogram(
    "roomcast_gateway_read_state_batch_size",
    "Read states asked of history in one `read_states` request (a turn's joins)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
PINGED_SOCKETS = Gauge(
    "roomcast_gateway_pinged_sockets",
    "Open WebSockets the gateway's one pinger watches (ping, and close when unanswered)",
)

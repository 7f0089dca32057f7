"""Who may open a WebSocket (PROTOCOL.md 2.2): the Origin allow-list (403), the open sockets per
client address (429), the client address behind trusted proxies, and the settings for them.

The rules are checked on `Admission` with hand-made ASGI scopes, then end to end: handshakes
written by hand (any Host, Origin or forwarded header) against the in-process server, each
refusal checked for what the client gets, the log line and the metric.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
import websockets
from prometheus_client import REGISTRY

import roomcast.gateway.logthrottle as logthrottle
from roomcast.gateway.admission import Admission, Refusal, Ticket
from roomcast.shared.config import ConfigError, load_settings
from tests.support.chat_client import ChatClient
from tests.support.inprocess import Server

pytestmark = pytest.mark.unit

REFUSED_LINE = "websocket handshake refused"
Headers = list[tuple[str, str]]


def scope(
    peer: str = "127.0.0.1", headers: Headers | None = None, scheme: str = "ws"
) -> dict[str, Any]:
    return {
        "type": "websocket",
        "scheme": scheme,
        "client": (peer, 50000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers or []],
    }


def admission(**settings: Any) -> Admission:
    return Admission(load_settings(**settings))


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("roomcast_handshakes_refused_total", {"reason": reason}) or 0.0


def admitted(gate: Admission, handshake: dict[str, Any]) -> bool:
    verdict = gate.admit(handshake)
    if isinstance(verdict, Ticket):
        gate.release(verdict)
        return True
    assert verdict.status == 403 and verdict.reason == "origin", verdict
    return False


# the client address -------------------------------------------------------------------------
PROXIES = "10.0.0.0/8, 2001:db8:ffff::/48"


@pytest.mark.parametrize(
    ("settings", "peer", "headers", "address"),
    [
        ({}, "198.51.100.7", [("x-forwarded-for", "203.0.113.1")], "198.51.100.7"),
        ({}, "::ffff:198.51.100.7", [], "198.51.100.7"),
        ({"trusted_proxies": PROXIES}, "10.0.0.1", [], "10.0.0.1"),
        (
            {"trusted_proxies": PROXIES},
            "10.0.0.1",
            [("x-forwarded-for", "203.0.113.1")],
            "203.0.113.1",
        ),
        # the left of the first untrusted entry is what the client wrote itself
        (
            {"trusted_proxies": PROXIES},
            "10.0.0.1",
            [("x-forwarded-for", "6.6.6.6, 203.0.113.1, 10.0.0.9")],
            "203.0.113.1",
        ),
        # one line per proxy is the same list
        (
            {"trusted_proxies": PROXIES},
            "10.0.0.1",
            [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.1")],
            "203.0.113.1",
        ),
        # every hop a proxy: the left-most
        (
            {"trusted_proxies": PROXIES},
            "10.0.0.1",
            [("x-forwarded-for", "10.0.0.8, 10.0.0.9")],
            "10.0.0.8",
        ),
        # not an address: the nearest hop that is one
        (
            {"trusted_proxies": PROXIES},
            "10.0.0.1",
            [("x-forwarded-for", "203.0.113.1, unknown, 10.0.0.9")],
            "10.0.0.9",
        ),
        (
            {"trusted_proxies": PROXIES},
            "10.0.0.1",
            [("x-forwarded-for", "[2001:db8::1]:4711")],
            "2001:db8::1",
        ),
        (
            {"trusted_proxies": PROXIES},
            "2001:db8:ffff::2",
            [("x-forwarded-for", "203.0.113.1:4711")],
            "203.0.113.1",
        ),
        # a peer that is no trusted proxy cannot say who it is
        (
            {"trusted_proxies": PROXIES},
            "198.51.100.7",
            [("x-forwarded-for", "6.6.6.6")],
            "198.51.100.7",
        ),
        # RFC 7239, when the proxies write it; X-Forwarded-For is then the client's own
        (
            {"trusted_proxies": PROXIES, "forwarded_headers": "forwarded"},
            "10.0.0.1",
            [
                ("forwarded", 'for=6.6.6.6, for="[2001:db8::1]:4711";proto=https, for=10.0.0.9'),
                ("x-forwarded-for", "6.6.6.7"),
            ],
            "2001:db8::1",
        ),
        (
            {"trusted_proxies": PROXIES},
            "10.0.0.1",
            [("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "203.0.113.1")],
            "203.0.113.1",
        ),
    ],
)
def test_client_address(
    settings: dict[str, str], peer: str, headers: Headers, address: str
) -> None:
    assert admission(**settings).client_address(scope(peer, headers)) == address


# origins ------------------------------------------------------------------------------------
HOST = [("host", "chat.example:8000")]


@pytest.mark.parametrize(
    ("origin", "headers", "ws_scheme", "allowed"),
    [
        ("http://chat.example:8000", HOST, "ws", True),
        ("HTTP://Chat.Example:8000", HOST, "ws", True),
        ("http://chat.example:8000/", HOST, "ws", True),
        ("http://chat.example:8001", HOST, "ws", False),
        ("http://chat.example.evil:8000", HOST, "ws", False),
        ("https://chat.example:8000", HOST, "ws", False),
        ("http://chat.example:80", [("host", "chat.example")], "ws", True),
        ("http://chat.example", [("host", "chat.example:80")], "ws", True),
        ("https://chat.example", [("host", "chat.example")], "wss", True),
        ("https://chat.example:443", [("host", "chat.example:443")], "wss", True),
        ("http://chat.example", [("host", "chat.example")], "wss", False),
        ("http://[::1]:8000", [("host", "[::1]:8000")], "ws", True),
        ("null", HOST, "ws", False),
        ("file://", HOST, "ws", False),
        ("not an origin", HOST, "ws", False),
        ("http://chat.example:8000", [], "ws", False),
        # forwarded headers count only from a trusted proxy (not here)
        (
            "https://chat.example",
            [
                ("host", "gateway:8000"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "chat.example"),
            ],
            "ws",
            False,
        ),
    ],
)
def test_own_origin(origin: str, headers: Headers, ws_scheme: str, allowed: bool) -> None:
    handshake = scope(headers=[*headers, ("origin", origin)], scheme=ws_scheme)
    assert admitted(admission(), handshake) is allowed


@pytest.mark.parametrize(
    ("forwarded", "origin", "allowed"),
    [
        (
            [("x-forwarded-proto", "https"), ("x-forwarded-host", "chat.example")],
            "https://chat.example",
            True,
        ),
        ([("x-forwarded-proto", "https")], "https://gateway:8000", True),
        ([("x-forwarded-proto", "https, http")], "https://gateway:8000", True),
        ([("x-forwarded-proto", "https")], "http://gateway:8000", False),
        ([("forwarded", "proto=https;host=chat.example")], "https://chat.example", False),
    ],
)
def test_own_origin_behind_a_trusted_proxy(forwarded: Headers, origin: str, allowed: bool) -> None:
    handshake = scope("10.0.0.1", [("host", "gateway:8000"), *forwarded, ("origin", origin)])
    assert admitted(admission(trusted_proxies="10.0.0.0/8"), handshake) is allowed


def test_own_origin_from_rfc7239_forwarded_when_configured() -> None:
    gate = admission(trusted_proxies="10.0.0.0/8", forwarded_headers="forwarded")
    headers = [
        ("host", "gateway:8000"),
        ("forwarded", 'for=1.2.3.4;proto=https;host="chat.example"'),
    ]
    assert admitted(gate, scope("10.0.0.1", [*headers, ("origin", "https://chat.example")]))
    assert not admitted(gate, scope("10.0.0.1", [*headers, ("origin", "http://chat.example")]))


def test_allowed_origins_and_any() -> None:
    listed = admission(allowed_origins="https://app.example, http://localhost:3000")
    for origin, allowed in [
        ("https://app.example", True),
        ("https://app.example:443", True),
        ("http://localhost:3000", True),
        ("http://app.example", False),
        ("https://other.example", False),
        ("http://chat.example:8000", True),  # its own stays allowed
    ]:
        assert admitted(listed, scope(headers=[*HOST, ("origin", origin)])) is allowed, origin
    anyone = admission(allowed_origins="*")
    for origin in ("https://evil.example", "null", "garbage"):
        assert admitted(anyone, scope(headers=[*HOST, ("origin", origin)])), origin


# the count per address ----------------------------------------------------------------------
def test_count_per_address_is_bounded_and_ipv6_counts_per_64() -> None:
    gate = admission(max_connections_per_ip=2)
    tickets = [gate.admit(scope(f"2001:db8:1:2::{n}")) for n in (1, 2)]
    third = gate.admit(scope("2001:db8:1:2::3"))
    assert isinstance(third, Refusal) and third.status == 429
    other_net = gate.admit(scope("2001:db8:1:3::1"))
    v4 = [gate.admit(scope("192.0.2.1")), gate.admit(scope("192.0.2.2"))]
    assert all(isinstance(t, Ticket) for t in [*tickets, other_net, *v4])
    assert gate.open_by_address == {
        "2001:db8:1:2::/64": 2,
        "2001:db8:1:3::/64": 1,
        "192.0.2.1": 1,
        "192.0.2.2": 1,
    }
    for ticket in [*tickets, other_net, *v4]:
        assert isinstance(ticket, Ticket)
        gate.release(ticket)
    assert gate.open_by_address == {}  # no entry stays at zero


def test_no_limit_with_zero() -> None:
    gate = admission(max_connections_per_ip=0)
    assert all(isinstance(gate.admit(scope()), Ticket) for _ in range(5000))


def test_refusal_lines_are_throttled_per_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(logthrottle.time, "monotonic", lambda: now[0])
    gate = admission(max_connections_per_ip=1)
    first = gate.admit(scope())
    before = refused("too_many_connections")
    with structlog.testing.capture_logs() as logs:
        for _ in range(25):
            gate.admit(scope())
        gate.admit(scope(headers=[*HOST, ("origin", "https://evil.example")]))
        now[0] += 10
        gate.admit(scope())
    lines = [e for e in logs if e["event"] == REFUSED_LINE]
    assert [e["reason"] for e in lines] == ["too_many_connections"] * 10 + [
        "origin",
        "too_many_connections",
    ]
    assert lines[-1]["left_out"] == 15 and "left_out" not in lines[0]
    assert refused("too_many_connections") == before + 26  # every one counted
    assert isinstance(first, Ticket)


# settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ROOMCAST_TRUSTED_PROXIES", "10.0.0.0/8, 10.0.0.300", "'10.0.0.300' is not an IP address"),
        ("ROOMCAST_TRUSTED_PROXIES", "proxy.internal", "is not an IP address or CIDR network"),
        ("ROOMCAST_ALLOWED_ORIGINS", "https://a.example/app", "is not an origin"),
        ("ROOMCAST_ALLOWED_ORIGINS", "chat.example", "is not an origin"),
        ("ROOMCAST_ALLOWED_ORIGINS", "ws://chat.example", "is not an origin"),
        ("ROOMCAST_MAX_CONNECTIONS_PER_IP", "-1", "greater than or equal to 0"),
        ("ROOMCAST_MAX_CONNECTIONS_PER_IP", "many", "valid integer"),
        ("ROOMCAST_FORWARDED_HEADERS", "x-real-ip", "'x-forwarded' or 'forwarded'"),
        ("ROOMCAST_PING_INTERVAL", "0", "greater than 0"),
        ("ROOMCAST_PING_TIMEOUT", "-1", "greater than 0"),
        ("ROOMCAST_PING_TIMEOUT", "soon", "valid number"),
    ],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value).startswith(f"{variable}: ") and says in str(error.value)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOMCAST_TRUSTED_PROXIES", " 10.0.0.0/8,192.0.2.1 , ::1,")
    monkeypatch.setenv("ROOMCAST_ALLOWED_ORIGINS", "https://Chat.Example, http://localhost:3000")
    settings = load_settings()
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32", "::1/128"]
    assert settings.allowed_origins == ("https://chat.example:443", "http://localhost:3000")
    assert (settings.max_connections_per_ip, settings.ping_interval, settings.ping_timeout) == (
        1000,
        20.0,
        20.0,
    )


# end to end ---------------------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    body: bytes
    writer: asyncio.StreamWriter


Shake = Callable[..., Awaitable[Answer]]


@pytest.fixture
async def shake(server: Server) -> AsyncIterator[Shake]:
    """Hand-written handshakes to the server (any headers); open sockets closed at the end."""
    writers: list[asyncio.StreamWriter] = []
    port = int(server.http.rsplit(":", 1)[1])

    async def handshake(*headers: tuple[str, str]) -> Answer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        names = {name.lower() for name, _ in headers}
        lines = [] if "host" in names else [f"Host: 127.0.0.1:{port}"]
        key = base64.b64encode(os.urandom(16)).decode()
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers),
        ]
        writer.write(("GET /ws HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(10):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            status = int(head.split()[1])
            body = b""
            if status != 101:
                length = int(head.split("content-length:")[1].split()[0])
                body = await reader.readexactly(length)
        return Answer(status, body, writer)

    yield handshake
    for writer in writers:
        writer.close()


def gate(server: Server) -> Admission:
    return server.system.app.asgi_app.admission  # type: ignore[attr-defined, no-any-return]


async def until_open(server: Server, expected: dict[str, int]) -> None:
    """The server releases a socket's share once it has seen it close (bounded wait)."""
    async with asyncio.timeout(10):
        while gate(server).open_by_address != expected:  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.02)


@pytest.mark.settings(max_connections_per_ip=2)
async def test_sockets_beyond_the_per_address_limit_are_refused_429(connect, server) -> None:
    alice: ChatClient = await connect()
    bob: ChatClient = await connect()
    await alice.join("alice")
    await bob.join("bob")
    before = refused("too_many_connections")
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(websockets.InvalidStatus) as refusal,
    ):
        await websockets.connect(server.url + "/ws", open_timeout=10)
    response = refusal.value.response
    assert response.status_code == 429
    assert response.body == b"too many open connections from your address (at most 2)"
    assert response.headers["content-type"].startswith("text/plain")
    lines = [e for e in logs if e["event"] == REFUSED_LINE]
    assert len(lines) == 1 and lines[0]["log_level"] == "warning"
    assert (lines[0]["reason"], lines[0]["address"]) == ("too_many_connections", "127.0.0.1")
    assert refused("too_many_connections") == before + 1
    # those already in are unaffected; a socket that closes gives its share back
    await alice.say("main", "hello")
    await bob.event("updateChat")
    await bob.close()
    await until_open(server, {"127.0.0.1": 1})
    carol: ChatClient = await connect()
    await carol.join("carol")
    await alice.close()
    await carol.close()
    await until_open(server, {})


@pytest.mark.settings(max_connections_per_ip=1, trusted_proxies="127.0.0.1")
async def test_behind_a_trusted_proxy_the_forwarded_address_is_limited(shake, server) -> None:
    first = await shake(("X-Forwarded-For", "6.6.6.6, 203.0.113.1"))
    second = await shake(("X-Forwarded-For", "203.0.113.2"))
    assert (first.status, second.status) == (101, 101)
    with structlog.testing.capture_logs() as logs:
        again = await shake(("X-Forwarded-For", "7.7.7.7, 203.0.113.1"))
    assert again.status == 429
    assert [(e["reason"], e["address"]) for e in logs if e["event"] == REFUSED_LINE] == [
        ("too_many_connections", "203.0.113.1")
    ]
    assert gate(server).open_by_address == {"203.0.113.1": 1, "203.0.113.2": 1}
    first.writer.close()
    await until_open(server, {"203.0.113.2": 1})
    assert (await shake(("X-Forwarded-For", "203.0.113.1"))).status == 101


@pytest.mark.settings(max_connections_per_ip=1)
async def test_forwarded_addresses_from_an_untrusted_peer_are_ignored(shake, server) -> None:
    assert (await shake(("X-Forwarded-For", "203.0.113.1"))).status == 101
    with structlog.testing.capture_logs() as logs:
        answer = await shake(("X-Forwarded-For", "203.0.113.2"), ("Forwarded", "for=203.0.113.3"))
    assert answer.status == 429
    assert [e["address"] for e in logs if e["event"] == REFUSED_LINE] == ["127.0.0.1"]


async def test_a_page_of_another_origin_is_refused_403(connect, shake, server) -> None:
    before = refused("origin")
    with structlog.testing.capture_logs() as logs:
        answer = await shake(("Origin", "https://evil.example"))
    assert answer.status == 403
    assert answer.body == b"this page's origin may not open a WebSocket on this server"
    lines = [e for e in logs if e["event"] == REFUSED_LINE]
    assert len(lines) == 1 and lines[0]["log_level"] == "warning"
    assert (lines[0]["reason"], lines[0]["address"], lines[0]["origin"]) == (
        "origin",
        "127.0.0.1",
        "https://evil.example",
    )
    assert refused("origin") == before + 1
    assert gate(server).open_by_address == {}  # a refused handshake holds no share
    # the gateway's own pages, and clients that send no Origin, are let in
    port = server.http.rsplit(":", 1)[1]
    own: ChatClient = await connect(origin=f"http://127.0.0.1:{port}")
    await own.join("alice")
    plain: ChatClient = await connect()
    await plain.join("bob")
    assert (await shake(("Host", "localhost"), ("Origin", "http://localhost:80"))).status == 101


@pytest.mark.settings(allowed_origins="https://app.example")
async def test_listed_origins_are_let_in(shake) -> None:
    assert (await shake(("Origin", "https://app.example:443"))).status == 101
    assert (await shake(("Origin", "http://app.example"))).status == 403


@pytest.mark.settings(trusted_proxies="127.0.0.0/8")
async def test_a_tls_proxy_forwards_the_origin_the_browser_saw(shake) -> None:
    forwarded = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "chat.example")]
    ok = await shake(("Host", "gateway:8000"), *forwarded, ("Origin", "https://chat.example"))
    assert ok.status == 101
    bad = await shake(("Host", "gateway:8000"), *forwarded, ("Origin", "http://gateway:8000"))
    assert bad.status == 403


async def test_a_draining_gateway_refusal_is_counted_and_logged(shake, server) -> None:
    before = refused("draining")
    server.system.gateway.draining = True
    try:
        with structlog.testing.capture_logs() as logs:
            answer = await shake()
    finally:
        server.system.gateway.draining = False
    assert (answer.status, answer.body) == (503, b"this gateway is restarting; connect to another")
    assert [(e["reason"], e["address"]) for e in logs if e["event"] == REFUSED_LINE] == [
        ("draining", "127.0.0.1")
    ]
    assert refused("draining") == before + 1

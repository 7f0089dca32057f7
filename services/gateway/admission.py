"""Who may open a WebSocket (protocol 2.2), decided before the handshake is accepted, so that a
refusal costs one small HTTP response and no socket: 403 for a browser page of a foreign origin
(cross-site WebSocket hijacking), 429 beyond `max_connections_per_ip` open sockets per client
address, 503 while the gateway drains.

The client address is the TCP peer's, unless the peer is a trusted proxy: then it is read from
the forwarded headers, walking them from the right (the entries trusted proxies appended) to the
first address that is not a trusted proxy; anything left of that is the client's own say. Only
one family of headers is read (`forwarded_headers`): a header the proxy does not write passes
through it as the client wrote it.

Every refusal is counted and logged with its reason and address; the log is throttled per reason
so that a flood of refused handshakes cannot flood it (the next line says how many were left out).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import structlog

from roomcast.shared.config import Settings, normalise_origin

from .logthrottle import LogThrottle
from .metrics import HANDSHAKES_REFUSED

log = structlog.get_logger(__name__)

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Refusal:
    """The HTTP answer to a refused handshake."""

    status: int
    reason: str  # the metric's label
    body: bytes


@dataclass(frozen=True)
class Ticket:
    """An admitted socket's hold on its address's share; give it back when the socket closes."""

    address: str
    bucket: str


class Admission:
    def __init__(self, settings: Settings) -> None:
        self._limit = settings.max_connections_per_ip
        self._proxies = settings.trusted_proxies
        self._kind = settings.forwarded_headers
        self._any_origin = "*" in settings.allowed_origins
        self._origins = frozenset(settings.allowed_origins)
        self._open: dict[str, int] = {}  # bucket -> open sockets; no entry at zero
        self._throttle = LogThrottle()  # lines per reason

    def admit(self, scope: Mapping[str, Any]) -> Ticket | Refusal:
        headers = _headers(scope)
        peer = _peer(scope)
        via_proxy = peer is not None and self._trusted(peer)
        address = self._client(peer, headers) if peer is not None and via_proxy else peer
        shown = str(address) if address is not None else "unknown"
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, scope, headers, via_proxy):
            body = b"this page's origin may not open a WebSocket on this server"
            return self.refuse("origin", 403, body, shown, origin=origin[:200])
        bucket = _bucket(address)
        count = self._open.get(bucket, 0)
        if self._limit and count >= self._limit:
            text = f"too many open connections from your address (at most {self._limit})"
            return self.refuse("too_many_connections", 429, text.encode(), shown)
        self._open[bucket] = count + 1
        return Ticket(shown, bucket)

    def release(self, ticket: Ticket) -> None:
        left = self._open.get(ticket.bucket, 0) - 1
        if left > 0:
            self._open[ticket.bucket] = left
        else:
            self._open.pop(ticket.bucket, None)

    @property
    def open_by_address(self) -> dict[str, int]:
        return dict(self._open)

    def refuse(self, reason: str, status: int, body: bytes, address: str, **extra: str) -> Refusal:
        """Count and log a refusal (throttled), and return the answer to send."""
        HANDSHAKES_REFUSED.labels(reason).inc()
        left_out = self._throttle.allow(reason)
        if left_out is not None:
            more: dict[str, object] = {"left_out": left_out} if left_out else {}
            log.warning(
                "websocket handshake refused", reason=reason, address=address, **extra, **more
            )
        return Refusal(status, reason, body)

    def client_address(self, scope: Mapping[str, Any]) -> str:
        peer = _peer(scope)
        if peer is None:
            return "unknown"
        return str(self._client(peer, _headers(scope)) if self._trusted(peer) else peer)

    # the pieces ---------------------------------------------------------------------------
    def _trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._proxies)

    def _client(self, peer: IPAddress, headers: Mapping[str, str]) -> IPAddress:
        """The right-most forwarded address that is not a trusted proxy (the left-most when all
        are; the nearest good hop when an entry is not an address)."""
        if self._kind == "forwarded":
            entries = [e.get("for", "") for e in _forwarded(headers.get("forwarded", ""))]
        else:
            entries = headers.get("x-forwarded-for", "").split(",")
        current = peer
        for entry in reversed(entries):
            address = _address(entry)
            if address is None:
                break
            current = address
            if not self._trusted(address):
                break
        return current

    def _origin_allowed(
        self, origin: str, scope: Mapping[str, Any], headers: Mapping[str, str], via_proxy: bool
    ) -> bool:
        if self._any_origin:
            return True
        claimed = normalise_origin(origin)
        if claimed is None:  # "null" (sandboxed frames, files) or garbage
            return False
        return claimed in self._origins or claimed == self._own_origin(scope, headers, via_proxy)

    def _own_origin(
        self, scope: Mapping[str, Any], headers: Mapping[str, str], via_proxy: bool
    ) -> str | None:
        """This server's origin as the client addressed it: the Host header and the scheme of
        the request (ws -> http, wss -> https), or what a trusted proxy forwarded."""
        scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
        host = headers.get("host") or headers.get(":authority")
        if via_proxy:
            if self._kind == "forwarded":
                first = next(iter(_forwarded(headers.get("forwarded", ""))), {})
                proto, forwarded_host = first.get("proto"), first.get("host")
            else:
                proto = _first(headers.get("x-forwarded-proto"))
                forwarded_host = _first(headers.get("x-forwarded-host"))
            if proto:
                scheme = {"ws": "http", "wss": "https"}.get(proto.lower(), proto.lower())
            host = forwarded_host or host
        if not host:
            return None
        return normalise_origin(f"{scheme}://{host}")


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """Header name -> value; repeated headers joined with commas, in order."""
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        out[key] = f"{out[key]},{text}" if key in out else text
    return out


def _peer(scope: Mapping[str, Any]) -> IPAddress | None:
    client = scope.get("client")
    return _address(str(client[0])) if client else None


def _address(text: str) -> IPAddress | None:
    """An address from a forwarded entry: `1.2.3.4`, `1.2.3.4:5`, `[::1]:5`, `"[::1]"`, `::1`."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None  # also "unknown" and obfuscated identifiers (RFC 7239)
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _bucket(address: IPAddress | None) -> str:
    """IPv6 clients are counted per /64: one host usually holds a whole /64 of addresses."""
    if isinstance(address, IPv6Address):
        return str(ip_network(f"{address}/64", strict=False))
    return str(address)


def _forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 `Forwarded`: one dict of lowercased keys per element, left to right."""
    elements: list[dict[str, str]] = []
    for element in value.split(","):
        pairs: MutableMapping[str, str] = {}
        for pair in element.split(";"):
            key, _, item = pair.partition("=")
            if key.strip():
                pairs[key.strip().lower()] = item.strip().strip('"')
        elements.append(dict(pairs))
    return elements


def _first(value: str | None) -> str | None:
    return value.split(",")[0].strip() if value else None

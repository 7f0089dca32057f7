"""The `/ws` endpoint, spoken in plain ASGI in front of the Quart app.

Quart wraps every WebSocket in a request context, a second task and a message queue of its own;
at tens of thousands of sockets that is a large share of each socket's memory and of each
frame's CPU, and the gateway needs none of it: `Connection` only wants "receive a frame",
"send a text" and "close with a code". Everything else (HTTP API, pages, health) stays Quart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from .admission import Admission, Refusal
from .gateway import ChatGateway
from .rawsend import direct_sender
from .slimconn import forget_http

Scope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]

PATH = "/ws"


class ClientGoneError(Exception):
    """The client closed the socket or the connection dropped."""


class WebSocketEndpoint:
    """ASGI middleware: serves `/ws` itself and hands everything else to `app`."""

    def __init__(self, app: ASGIApp, gateway: ChatGateway) -> None:
        self._app = app
        self._gateway = gateway
        self.admission = Admission(gateway.settings)

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "websocket" or scope["path"] != PATH:
            await self._app(scope, receive, send)
            return
        gateway = self._gateway
        if (await receive())["type"] != "websocket.connect":
            return
        if gateway.draining:
            body = b"this gateway is restarting; connect to another"
            address = self.admission.client_address(scope)
            await _refuse(scope, send, self.admission.refuse("draining", 503, body, address))
            return
        ticket = self.admission.admit(scope)
        if isinstance(ticket, Refusal):
            await _refuse(scope, send, ticket)
            return
        try:
            await self._serve(scope, receive, send)
        finally:
            self.admission.release(ticket)

    async def _serve(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        gateway = self._gateway
        await send({"type": "websocket.accept"})
        # The handshake was read (admission, the query): an idle socket keeps none of it, nor
        # the HTTP/1.1 state under it (docs/performance.md, "Idle memory").
        scope["headers"] = ()
        forget_http(getattr(send, "__self__", None))

        socket = _Socket(receive, send)
        conn = gateway.open(direct_sender(send), socket.close, batch=_batched(scope))
        try:
            await conn.serve(
                socket.receive_frame, gateway.on_frame, gateway.settings.max_frame_bytes
            )
        finally:
            gateway.closed_soon(conn)


def _batched(scope: Scope) -> bool:
    """Whether the client asked for `?batch=1` (PROTOCOL.md, Batching)."""
    return parse_qs(scope.get("query_string", b"").decode("latin-1")).get("batch") == ["1"]


class _Socket:
    """What `Connection` asks of the ASGI socket: its next frame, and a close. Slotted, with
    bound methods, rather than two closures per socket (docs/performance.md, "Idle memory")."""

    __slots__ = ("_receive", "_send")

    def __init__(self, receive: ASGIReceive, send: ASGISend) -> None:
        self._receive = receive
        self._send = send

    async def receive_frame(self) -> str | bytes:
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            return text if text is not None else (message.get("bytes") or b"")
        raise ClientGoneError

    async def close(self, code: int) -> None:
        await self._send({"type": "websocket.close", "code": code})


async def _refuse(scope: Scope, send: ASGISend, refusal: Refusal) -> None:
    """Answer the handshake with an HTTP error where the server can (an ASGI extension),
    otherwise close before accepting (the server answers 403)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = refusal.body
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        start = {"type": "websocket.http.response.start", "status": refusal.status}
        await send({**start, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1013})

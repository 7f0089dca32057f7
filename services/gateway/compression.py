"""The one adapter to Hypercorn's WebSocket handshake: decline permessage-deflate.

Hypercorn accepts a client's deflate offer unconditionally, which compresses every frame per
socket (defeating encode-once) and keeps ~100 KiB of zlib state per socket. With compression off
(the default) the handshake ignores the client's extension offer, so no extension is
negotiated. Hypercorn is pinned in pyproject.toml because this touches its internals; a test
checks that an offer is declined.
"""

from __future__ import annotations

from hypercorn.protocol import ws_stream

_ORIGINAL = ws_stream.Handshake


class _NoExtensionsHandshake(_ORIGINAL):
    def __init__(self, headers: list[tuple[bytes, bytes]], http_version: str) -> None:
        super().__init__(headers, http_version)
        self.extensions = None


def set_websocket_compression(enabled: bool) -> None:
    """Allow or decline permessage-deflate for WebSockets this process accepts from now on."""
    ws_stream.Handshake = _ORIGINAL if enabled else _NoExtensionsHandshake  # type: ignore[misc]

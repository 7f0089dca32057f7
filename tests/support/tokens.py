"""Sign-in tokens for tests: HS256 with a test secret, RS256/ES256 keys, and a JWKS endpoint on
127.0.0.1 that counts its requests and can be told to fail or to hold an answer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

JWT_SECRET = "test-jwt-secret-of-at-least-32-bytes!"


def claims(sub: str = "u-1", *, ttl: float = 3600, **extra: Any) -> dict[str, Any]:
    """`sub` and an `exp` `ttl` seconds from now, plus `extra` (a None value leaves it out)."""
    body: dict[str, Any] = {"sub": sub, "exp": int(time.time() + ttl)}
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def hs256(secret: str = JWT_SECRET, /, **kwargs: Any) -> str:
    return jwt.encode(claims(**kwargs), secret, algorithm="HS256")


@dataclass
class SigningKey:
    """A private key and its public JWK under `kid`."""

    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        public = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, body: dict[str, Any], *, kid: str | None = "", alg: str = "") -> str:
        """`kid` "" is this key's own id, None leaves the header without one."""
        headers = {} if kid is None else {"kid": kid or self.kid}
        return jwt.encode(body, self.private, algorithm=alg or self.alg, headers=headers)


@dataclass
class JwksServer:
    """What the endpoint serves (`keys`, or `status` other than 200), and what it saw."""

    keys: list[SigningKey] = field(default_factory=list)
    status: int = 200
    body: bytes | None = None  # served instead of the key set
    requests: int = 0
    hold: threading.Event | None = None  # answer only once it is set
    asked: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def document(self) -> bytes:
        if self.body is not None:
            return self.body
        return json.dumps({"keys": [key.jwk() for key in self.keys]}).encode()


@contextmanager
def jwks_server(*keys: SigningKey) -> Iterator[JwksServer]:
    state = JwksServer(list(keys))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            state.asked.set()
            if state.hold is not None and not state.hold.wait(10):
                self.send_error(504)
                return
            if state.status != 200:
                self.send_error(state.status)
                return
            body = state.document()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        if state.hold is not None:
            state.hold.set()
        server.shutdown()
        server.server_close()
        thread.join(5)

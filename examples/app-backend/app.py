"""An application's backend in front of roomcast (protocol 2.4), in one small Quart app.

It signs its users in with its own login (a toy table of scrypt-hashed passwords), mints each a
roomcast token (HS256 JWT: sub, exp, name, rooms, roles) and sends them to roomcast's web client
with `/#token=...`; posts as a bot through roomcast's backend API; and receives roomcast's
webhooks, refusing any POST whose signature does not verify. Settings come from the environment
(README.md). Run: `python examples/app-backend/app.py`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from quart import Quart, Response, jsonify, redirect, request, session

from roomcast.webhooks.signing import HEADER, SignatureError, verify


def setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise SystemExit(f"app-backend: error: {name} is not set")
    return value


ROOMCAST_URL = setting("ROOMCAST_URL", "http://127.0.0.1:8000").rstrip("/")
JWT_SECRET = setting("ROOMCAST_JWT_SECRET")
API_KEY = setting("ROOMCAST_API_KEY").split(",")[0].strip()
WEBHOOK_SECRET = setting("ROOMCAST_WEBHOOK_SECRET")
TOKEN_SECONDS = int(setting("APP_TOKEN_SECONDS", "3600"))
BOT_NAME = "helpdesk-bot"


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"{salt.hex()}${digest.hex()}"


def password_ok(password: str, stored: str) -> bool:
    salt, _, _ = stored.partition("$")
    return hmac.compare_digest(hash_password(password, bytes.fromhex(salt)), stored)


@dataclass(frozen=True)
class User:
    id: str  # the token's `sub`: stable, unlike a display name
    name: str
    password_hash: str
    rooms: list[str] | None = None  # None: every public room
    roles: tuple[str, ...] = ()


# A toy user table; a real application has its own. Passwords: README.md.
USERS = {
    u.name: u
    for u in (
        User("u-1001", "alice", hash_password("wonderland"), roles=("moderator",)),
        User("u-1002", "bob", hash_password("builder"), rooms=["main", "support"]),
    )
}

app = Quart(__name__)
app.secret_key = setting("APP_SECRET_KEY", secrets.token_urlsafe(32))
received: list[dict[str, Any]] = []  # webhook events, verified and de-duplicated
_seen: OrderedDict[str, None] = OrderedDict()  # recent event ids: delivery is at least once


def mint_token(user: User) -> str:
    claims: dict[str, Any] = {"sub": user.id, "name": user.name}
    claims["exp"] = int(time.time()) + TOKEN_SECONDS
    if user.rooms is not None:
        claims["rooms"] = user.rooms
    if user.roles:
        claims["roles"] = list(user.roles)
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


LOGIN_FORM = """<!doctype html><title>Sign in</title><p>{error}</p>
<form method="post" action="/login"><input name="username" placeholder="username">
<input name="password" type="password" placeholder="password"><button>Sign in</button></form>"""


@app.get("/")
async def index() -> str:
    return LOGIN_FORM.format(error="")


@app.post("/login")
async def login() -> Any:
    """Check the password, then hand over to roomcast signed in (the fragment never reaches a
    server log: the web client reads it and removes it from the address bar)."""
    form = await request.form
    user = USERS.get(form.get("username", ""))
    if user is None or not password_ok(form.get("password", ""), user.password_hash):
        return Response(LOGIN_FORM.format(error="Wrong name or password."), 401)
    session["user"] = user.name
    return redirect(f"{ROOMCAST_URL}/#token={mint_token(user)}", 303)


@app.post("/bot/say")
async def bot_say() -> Any:
    """Post as the bot through roomcast's backend API (signed-in users of this app only)."""
    if session.get("user") not in USERS:
        return jsonify(error="sign in first"), 401
    data = await request.get_json(silent=True)
    if not isinstance(data, dict):
        return jsonify(error='send JSON: {"room", "body"}'), 400
    room, body = str(data.get("room", "main")), str(data.get("body", ""))
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(
            f"{ROOMCAST_URL}/api/rooms/{quote(room, safe='')}/messages",
            json={"username": BOT_NAME, "body": f"{body} (asked by {session['user']})"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    return jsonify(answer.json()), answer.status_code


@app.post("/webhooks/roomcast")
async def roomcast_webhook() -> Any:
    """Verify before trusting anything in the body; the raw bytes are what was signed."""
    body = await request.get_data()
    try:
        verify(request.headers.get(HEADER), body, WEBHOOK_SECRET)
    except SignatureError as exc:
        app.logger.warning("webhook refused: %s", exc)
        return jsonify(error=str(exc)), 401
    payload = await request.get_json(force=True)
    for event in payload["events"]:
        if event["id"] in _seen:
            continue  # a repeat of an event we already handled
        _seen[event["id"]] = None
        if len(_seen) > 10_000:
            _seen.popitem(last=False)
        received.append(event)
        app.logger.info("roomcast: %s in %s", event["type"], event["room"])
    return Response(status=204)


@app.get("/webhooks/roomcast")
async def webhook_log() -> Any:
    """What roomcast told us (a demo page; a real app acts on the events instead)."""
    return jsonify(events=received)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(setting("APP_PORT", "5000")), use_reloader=False)

"""examples/app-backend end to end against `roomcast dev` (protocol 2.4): both run as processes;
the app signs a user in with its own login and mints a roomcast token, a WebSocket join with
that token succeeds, the app's bot message (backend API) reaches a reader, and roomcast's
webhooks of the join and the message reach the app, verified."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from roomcast.webhooks import signing
from tests.support.chat_client import ChatClient, RefusedError
from tests.support.dev_process import DevProcess
from tests.support.ports import free_port, wait_for_port

pytestmark = pytest.mark.e2e

APP = Path(__file__).parents[2] / "examples" / "app-backend" / "app.py"
JWT_SECRET = "e2e-jwt-secret-0123456789abcdef-0123456789"
API_KEY = "e2e-api-key-0123456789abcdef"
WEBHOOK_SECRET = "e2e-webhook-secret-0123456789"


class Stack:
    def __init__(self, dev: DevProcess, app_url: str) -> None:
        self.dev, self.app = dev, app_url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("app-backend")
    dev = DevProcess(base / "data", free_port(), base / "dev.log")
    app_port = free_port()
    app_url = f"http://127.0.0.1:{app_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOMCAST_", "APP_"))}
    env.update(
        ROOMCAST_URL=dev.http,
        ROOMCAST_JWT_SECRET=JWT_SECRET,
        ROOMCAST_API_KEY=API_KEY,
        ROOMCAST_WEBHOOK_SECRET=WEBHOOK_SECRET,
        APP_PORT=str(app_port),
    )
    with (base / "app.log").open("wb") as log:
        app = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=log, stderr=log)
    dev.env = {
        "ROOMCAST_JWT_SECRET": JWT_SECRET,
        "ROOMCAST_API_KEY": API_KEY,
        "ROOMCAST_WEBHOOK_URL": f"{app_url}/webhooks/roomcast",
        "ROOMCAST_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ROOMCAST_WEBHOOK_RETRY_FIRST": "0.1",
        "ROOMCAST_WEBHOOK_RETRY_MAX": "1",
    }
    try:
        try:
            wait_for_port(app_port, timeout=60)
        except TimeoutError:
            log_text = (base / "app.log").read_text(errors="replace")[-3000:]
            raise AssertionError(
                f"the app did not listen (exit {app.poll()}):\n{log_text}"
            ) from None
        dev.start()
        dev.wait_ready()
        yield Stack(dev, app_url)
    finally:
        app.terminate()
        app.wait(10)
        dev.stop()


@pytest.fixture
async def browser(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """One user's browser at the app: it keeps the app's session cookie."""
    async with httpx.AsyncClient(base_url=stack.app, timeout=10) as client:
        yield client


async def sign_in(browser: httpx.AsyncClient, stack: Stack, name: str, password: str) -> str:
    answer = await browser.post("/login", data={"username": name, "password": password})
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith(f"{stack.dev.http}/#token=")
    assert (await browser.get(location)).status_code == 200  # roomcast's web client
    return urlsplit(location).fragment.removeprefix("token=")


async def webhook_events(stack: Stack, match: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """The app's verified events, once `match(events)` holds (a bounded wait)."""
    async with httpx.AsyncClient(timeout=5) as http, asyncio.timeout(timeout):
        while True:
            events: list[dict[str, Any]] = (
                await http.get(f"{stack.app}/webhooks/roomcast")
            ).json()["events"]
            if match(events):
                return events
            await asyncio.sleep(0.1)


async def test_a_wrong_password_gets_no_token(stack: Stack, browser: httpx.AsyncClient) -> None:
    for name, password in (("alice", "wrong"), ("nobody", "wonderland"), ("alice", "")):
        answer = await browser.post("/login", data={"username": name, "password": password})
        assert answer.status_code == 401
        assert "token" not in answer.headers.get("location", "")


async def test_the_minted_token_carries_the_claims(
    stack: Stack, browser: httpx.AsyncClient
) -> None:
    token = await sign_in(browser, stack, "bob", "builder")
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "u-1002" and claims["name"] == "bob"
    assert claims["rooms"] == ["main", "support"] and "roles" not in claims
    assert time.time() < claims["exp"] <= time.time() + 3600
    alice = jwt.decode(await sign_in(browser, stack, "alice", "wonderland"), JWT_SECRET, ["HS256"])
    assert alice["roles"] == ["moderator"] and "rooms" not in alice


async def test_signed_in_users_chat_the_bot_posts_and_webhooks_arrive(stack: Stack) -> None:
    async with (
        httpx.AsyncClient(base_url=stack.app, timeout=10) as alice_browser,
        httpx.AsyncClient(base_url=stack.app, timeout=10) as bob_browser,
    ):
        alice_token = await sign_in(alice_browser, stack, "alice", "wonderland")
        bob_token = await sign_in(bob_browser, stack, "bob", "builder")
        alice = await ChatClient.connect(stack.dev.ws)
        bob = await ChatClient.connect(stack.dev.ws)
        try:
            ack = await alice.request("userJoin", {"token": alice_token, "room": "support"})
            assert ack["room"] == "support"
            await bob.request("userJoin", {"token": bob_token, "room": "support"})
            with pytest.raises(RefusedError):  # not in bob's `rooms` claim
                await bob.request("userJoin", {"token": bob_token, "room": "elsewhere"})

            said = await alice_browser.post("/bot/say", json={"room": "support", "body": "hi"})
            assert said.status_code == 201, said.text
            message = said.json()
            assert message["username"] == "helpdesk-bot"
            live = await bob.wait_for(
                lambda f: f["event"] == "updateChat" and f["data"]["id"] == message["id"]
            )
            assert live["data"]["body"] == "hi (asked by alice)"
        finally:
            await alice.close()
            await bob.close()

    def complete(events: list[dict[str, Any]]) -> bool:
        seen = {(e["type"], e["room"], e.get("username")) for e in events}
        posted = {e["message"]["id"] for e in events if e["type"] == "message.posted"}
        return {
            ("room.occupied", "support", None),
            ("member.joined", "support", "alice"),
            ("member.joined", "support", "bob"),
        } <= seen and message["id"] in posted

    events = await webhook_events(stack, complete)
    (posted,) = [e for e in events if e["type"] == "message.posted"]
    assert posted["message"] == message


async def test_the_app_refuses_webhooks_that_do_not_verify(stack: Stack) -> None:
    body = b'{"events":[{"id":"forged-1","type":"room.vacated","time":1,"room":"main"}]}'
    stale = signing.sign(WEBHOOK_SECRET, body, now=time.time() - 3600)
    other = signing.sign("not-the-webhook-secret-0123", body)
    async with httpx.AsyncClient(base_url=stack.app, timeout=5) as http:
        for headers in ({}, {signing.HEADER: stale}, {signing.HEADER: other}):
            answer = await http.post("/webhooks/roomcast", content=body, headers=headers)
            assert answer.status_code == 401
        events = (await http.get("/webhooks/roomcast")).json()["events"]
    assert "forged-1" not in {e["id"] for e in events}


async def test_the_bot_speaks_only_for_signed_in_users(
    stack: Stack, browser: httpx.AsyncClient
) -> None:
    answer = await browser.post("/bot/say", json={"room": "main", "body": "spam"})
    assert answer.status_code == 401
    await sign_in(browser, stack, "alice", "wonderland")
    assert (await browser.post("/bot/say", content=b"not json")).status_code == 400

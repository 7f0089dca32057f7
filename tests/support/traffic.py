"""Traffic for system tests: clients that keep chatting through restarts, and reading a
room's whole history back over the HTTP API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import websockets

from tests.support.chat_client import ChatClient, RefusedError


async def all_messages(http_base: str, room: str = "main") -> list[dict[str, Any]]:
    """The room's whole history over the HTTP API, oldest first."""
    async with httpx.AsyncClient(base_url=http_base, timeout=10) as http:
        page = (await http.get(f"/api/rooms/{room}/messages", params={"limit": 200})).json()
        messages = page["messages"]
        while page["messages"]:
            page = (
                await http.get(
                    f"/api/rooms/{room}/messages",
                    params={"limit": 200, "before": messages[0]["id"]},
                )
            ).json()
            messages = page["messages"] + messages
        return messages


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await check()
            except (AssertionError, httpx.HTTPError):
                await asyncio.sleep(0.2)


async def chatter(name: str, urls: list[str], stop: asyncio.Event, acked: dict[str, str]) -> None:
    """A client that keeps chatting across gateway restarts: it reconnects to the next gateway,
    rejoins with its session and `since`, and re-sends what was not acknowledged, with the same
    id."""
    session: str | None = None
    pending: list[str] = []
    n = 0
    turn = 0
    while not stop.is_set():
        url = urls[turn % len(urls)]
        turn += 1
        try:
            client = await ChatClient.connect(url)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        try:
            extra = {"session": session} if session else {}
            await client.join(name, **extra)
            session = client.session
            while not stop.is_set():
                if not pending:
                    pending.append(f"{name}-{n:05d}")
                    n += 1
                message_id = pending[0]
                ack = await client.say("main", f"body of {message_id}", id=message_id)
                acked[message_id] = ack["id"]
                pending.pop(0)
                await asyncio.sleep(0.05)
        except (ConnectionError, RefusedError, websockets.ConnectionClosed, TimeoutError):
            await asyncio.sleep(0.1)
        finally:
            await client.close()


async def roll_while_chatting(
    gateways: list[Any], restart: Callable[[Any], Awaitable[None]], chatters: int = 4
) -> None:
    """Stop (SIGTERM) and restart each gateway in turn, as a rolling update does, while clients
    chat through them; then check that every acknowledged message is stored, and only once."""
    urls = [g.ws for g in gateways]
    stop = asyncio.Event()
    acked: dict[str, str] = {}
    tasks = [
        asyncio.create_task(chatter(f"user{i}", urls[i % 2 :] + urls[: i % 2], stop, acked))
        for i in range(chatters)
    ]
    await asyncio.sleep(1)
    for gateway in gateways:
        assert await gateway.stop() == 0
        await asyncio.sleep(0.5)
        await restart(gateway)
        await asyncio.sleep(1)
    stop.set()
    await asyncio.gather(*tasks)
    assert len(acked) > 20

    async def complete() -> None:
        stored = [m["id"] for m in await all_messages(gateways[0].http)]
        assert len(stored) == len(set(stored)), "a message was stored twice"
        missing = set(acked) - set(stored)
        assert not missing, f"acknowledged but not stored: {sorted(missing)[:5]}"

    await eventually(complete)

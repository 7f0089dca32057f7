"""Live gaps after a broker restart (PROTOCOL.md 2.2): readers that stay connected through a
restart of RabbitMQ see every stored message exactly once.

While the broker is away, the gateways' exclusive queues are gone; what is published meanwhile
(by writers whose publishes are confirmed just before, or right after the connection returns)
never reaches them. Each gateway repairs its rooms from history once its queue is back, from
where the loss began; a reader whose gateway cannot repair is closed 1013 and recovers with
`since`, as a client does.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from tests.servers.rabbitmq import PrivateRabbitNode
from tests.support.chat_client import ChatClient, RefusedError
from tests.support.cluster import Cluster
from tests.support.traffic import all_messages, eventually

pytestmark = pytest.mark.integration


class Reader:
    """Counts every chat message it is shown, live or in a recovery, across reconnects."""

    def __init__(self, name: str, url: str) -> None:
        self.name, self.url = name, url
        self.seen: Counter[str] = Counter()
        self.last: str | None = None
        self.reconnects = 0
        self.client: ChatClient | None = None
        self.session: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            client = self.client = await ChatClient.connect(self.url)
            try:
                extra = {"session": self.session} if self.session else {}
                if self.last is not None:
                    extra["since"] = self.last
                ack = await client.join(self.name, **extra)
                self.session = ack["session"]
                taken = 0
                while not stop.is_set() and not client.closed.done():
                    frames = client.frames[taken:]
                    taken += len(frames)
                    for frame in frames:
                        if frame["event"] == "msgHistory":
                            messages = frame["data"]
                            if self.last is None:  # the first join: only what comes after
                                self.last = messages[-1]["id"] if messages else ""
                                continue
                        elif frame["event"] == "updateChat":
                            messages = [frame["data"]]
                        else:
                            continue
                        for message in messages:
                            self.seen[message["id"]] += 1
                            self.last = message["id"]
                    await asyncio.sleep(0.02)
            except (ConnectionError, RefusedError, OSError):
                pass
            finally:
                await client.close()
            if not stop.is_set():
                self.reconnects += 1
                await asyncio.sleep(0.5)


async def write(name: str, url: str, stop: asyncio.Event, acked: list[str]) -> None:
    """Send steadily; a refused or unanswered message is re-sent with the same id until acked."""
    counter = itertools.count()
    client: ChatClient | None = None
    while not stop.is_set():
        message_id = f"{name}-{next(counter):05d}"
        while True:
            try:
                if client is None or client.closed.done():
                    client = await ChatClient.connect(url)
                    await client.join(name)
                await client.say("main", f"from {name}", id=message_id)
                acked.append(message_id)
                break
            except (RefusedError, ConnectionError, OSError, TimeoutError):
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.05)
    if client is not None:
        await client.close()


@pytest.mark.parametrize("restarts", [1, 2], ids=["one-restart", "two-restarts-in-a-row"])
async def test_readers_see_every_stored_message_once_across_broker_restarts(
    tmp_path, secantus_server, restarts
):
    """With two, the second restart comes as soon as chat works again after the first, while
    the gateways are still repairing (or about to): a repair that the second restart breaks
    must not lose its start, and messages relayed live before a repair asks must not move it."""
    async with PrivateRabbitNode() as node:
        cluster = Cluster(tmp_path, node.url, secantus_server.url, heartbeat_interval="1")
        try:
            await cluster.start("history")
            await cluster.start("presence")
            gateways = [await cluster.start("gateway"), await cluster.start("gateway")]
            readers = [Reader(f"reader{i}", gateways[i % 2].ws) for i in range(4)]
            stop_reading, stop_writing = asyncio.Event(), asyncio.Event()
            reading = [asyncio.create_task(r.run(stop_reading)) for r in readers]
            await eventually(_all_joined(readers), timeout=30)
            acked: list[str] = []
            writing = [
                asyncio.create_task(write(f"writer{i}", gw.ws, stop_writing, acked))
                for i, gw in enumerate(gateways)
            ]
            await eventually(_grows(acked, 20), timeout=30)
            for restart in range(restarts):
                await node.arestart()
                count = len(acked)
                more = 40 if restart == restarts - 1 else 2  # chat works again
                await eventually(_grows(acked, count + more), timeout=90)
            stop_writing.set()
            await asyncio.gather(*writing)

            async def stored_and_seen() -> list[str]:
                stored = [m["id"] for m in await all_messages(gateways[0].http)]
                assert set(acked) <= set(stored), "an acknowledged message was not stored"
                for reader in readers:
                    missing = [i for i in stored if i.startswith("writer") and not reader.seen[i]]
                    assert not missing, f"{reader.name} never saw {missing[:5]}"
                return stored

            stored = await eventually(stored_and_seen, timeout=60)
            stop_reading.set()
            await asyncio.gather(*reading)
            for reader in readers:
                twice = {i: n for i, n in reader.seen.items() if n > 1}
                assert not twice, f"{reader.name} saw messages twice: {list(twice)[:5]}"
            assert len(stored) == len(set(stored))
        finally:
            await cluster.close()


def _all_joined(readers: list[Reader]):  # type: ignore[no-untyped-def]
    async def check() -> None:
        assert all(r.last is not None for r in readers)

    return check


def _grows(acked: list[str], at_least: int):  # type: ignore[no-untyped-def]
    async def check() -> None:
        assert len(acked) >= at_least

    return check

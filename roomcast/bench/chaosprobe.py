"""Does chat work, end to end, across gateways? The chaos bench's yardstick for "back".

One attempt is what two new users would do: one opens a socket on each of two gateways, both
join the probe room (with history: a join that comes back `"history": false` does not count),
and each posts one message that the other must receive. Attempts start every quarter second,
several may be in flight (a join may wait for the server's request timeout), and the first to
complete ends the measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass

from .chaoslink import CONNECT_ERRORS, Frame, Link, LinkClosedError

PROBE_ROOM = "probe"
ATTEMPT_TIMEOUT = 10.0
ATTEMPT_EVERY = 0.25
MAX_IN_FLIGHT = 6


class ProbeFailedError(Exception):
    """One attempt did not get through (the message says where it stopped)."""


@dataclass
class ProbeResult:
    ok: bool
    at: float | None  # monotonic time of the last message received, when ok
    attempts: int
    last_failure: str | None


class Prober:
    def __init__(self, urls: list[str], tag: str) -> None:
        if len(urls) < 2:
            raise ValueError("the probe needs two gateways")
        self.urls = urls
        self.tag = tag
        self._n = itertools.count()
        self.last_failure: str | None = None

    async def attempt(self) -> float:
        """One attempt; the monotonic time it completed, or `ProbeFailedError`."""
        n = next(self._n)
        first = n % len(self.urls)
        urls = [self.urls[first], self.urls[(first + 1) % len(self.urls)]]
        inboxes: list[asyncio.Queue[Frame]] = [asyncio.Queue(), asyncio.Queue()]
        links: list[Link] = []
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT):
                for url, inbox in zip(urls, inboxes, strict=True):
                    links.append(await Link.open(url, inbox.put_nowait))
                names = [f"p{self.tag}x{n}a", f"p{self.tag}x{n}b"]
                await asyncio.gather(
                    *(_join(link, name) for link, name in zip(links, names, strict=True))
                )
                for i, (link, name) in enumerate(zip(links, names, strict=True)):
                    message_id = f"{name}-probe"
                    data = {
                        "username": name,
                        "body": "probe",
                        "time": 0,
                        "room": PROBE_ROOM,
                        "id": message_id,
                    }
                    answer = await link.request("updateChat", data, timeout=ATTEMPT_TIMEOUT)
                    if answer["event"] != "ack":
                        raise ProbeFailedError(f"updateChat: {answer['data']['code']}")
                    other = inboxes[1 - i]
                    while True:
                        frame = await other.get()
                        if frame.get("event") == "updateChat" and frame["data"]["id"] == message_id:
                            break
                return time.monotonic()
        except TimeoutError:
            raise ProbeFailedError("timed out") from None
        except LinkClosedError:
            raise ProbeFailedError("socket closed") from None
        except CONNECT_ERRORS as exc:
            raise ProbeFailedError(f"connect: {type(exc).__name__}") from None
        finally:
            for link in links:
                link.close()

    async def until_works(self, limit: float) -> ProbeResult:
        """Attempts until one gets through, or `limit` seconds pass."""
        deadline = time.monotonic() + limit
        self.last_failure = None
        running: set[asyncio.Task[float]] = set()
        attempts = 0
        next_start = time.monotonic()
        try:
            while time.monotonic() < deadline:
                now = time.monotonic()
                if now >= next_start and len(running) < MAX_IN_FLIGHT:
                    running.add(asyncio.create_task(self.attempt()))
                    attempts += 1
                    next_start = now + ATTEMPT_EVERY
                wake = min(next_start, deadline) - time.monotonic()
                if not running:
                    await asyncio.sleep(max(0.0, wake))
                    continue
                done, running = await asyncio.wait(
                    running, timeout=max(0.01, wake), return_when=asyncio.FIRST_COMPLETED
                )
                finished = [t.result() for t in done if t.exception() is None]
                for task in done:
                    if task.exception() is not None:
                        self.last_failure = str(task.exception())
                if finished:
                    return ProbeResult(True, min(finished), attempts, self.last_failure)
            return ProbeResult(False, None, attempts, self.last_failure)
        finally:
            for task in running:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*running, return_exceptions=True)


async def _join(link: Link, name: str) -> None:
    answer = await link.request(
        "userJoin", {"username": name, "room": PROBE_ROOM}, timeout=ATTEMPT_TIMEOUT
    )
    if answer["event"] != "ack":
        raise ProbeFailedError(f"userJoin: {answer['data']['code']}")
    if answer["data"].get("history") is False:
        raise ProbeFailedError("userJoin: without history")

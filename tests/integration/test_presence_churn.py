"""PROTOCOL.md 2.1 under churn: the list a client keeps (its `activeUsers` snapshot, then each
later `userJoin`/`userLeave` of the room in order) equals `GET /api/rooms/{room}/users` on every
gateway once the room is quiet.

30 users over two gateway processes (plus presence and history processes, on RabbitMQ and
SecantusDB) join, leave, reconnect (a second socket opened on the other gateway before the first
closes, so a user is briefly present twice) and close (cleanly or by dropping the TCP connection)
in a seeded random order across a few rooms, several operations in flight at once. The test keeps
its own model of who holds a joined socket in which room; once the churn stops, every live
client's list, every gateway's roster and the model must agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.chat_client import ChatClient
from tests.support.cluster import Cluster, ServiceProcess

pytestmark = pytest.mark.integration

USERS = 30
ROOMS = ("main", "churn-a", "churn-b", "churn-c")
OPERATIONS = 240
IN_FLIGHT = 6
SEED = 20261203
QUIET_LIMIT = 30.0  # seconds for every list to converge once the churn stops
TEST_LIMIT = 240.0


@dataclass
class Socket:
    """One live connection of a user and the rooms it has joined (acknowledged)."""

    client: ChatClient
    gateway: int
    rooms: set[str] = field(default_factory=set)


@dataclass
class User:
    name: str
    rng: random.Random  # this user's own draws: its sequence of operations is fixed by the seed
    session: str | None = None
    sockets: list[Socket] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Churn:
    def __init__(self, gateways: list[ServiceProcess], seed: int) -> None:
        self.gateways = gateways
        self.order = random.Random(seed)
        self.users = [User(f"churn{i:02d}", random.Random(seed + 1 + i)) for i in range(USERS)]
        self.log: list[str] = []  # what happened, in order (shown when the test fails)

    # operations ----------------------------------------------------------------------------
    async def open(self, user: User, gateway: int) -> Socket:
        client = await ChatClient.connect(self.gateways[gateway].ws)
        return Socket(client, gateway)

    async def join(self, user: User, sock: Socket, room: str) -> None:
        extra = {"session": user.session} if user.session else {}
        ack = await sock.client.join(user.name, room, **extra)
        user.session = ack["session"]
        sock.rooms.add(room)

    async def step(self, user: User) -> None:
        """One random operation on this user (its lock held)."""
        rng = user.rng
        if not user.sockets:
            sock = await self.open(user, rng.randrange(len(self.gateways)))
            user.sockets.append(sock)
            room = rng.choice(ROOMS)
            await self.join(user, sock, room)
            self.log.append(f"{user.name}: connect gw{sock.gateway}, join {room}")
            return
        sock = rng.choice(user.sockets)
        free = [r for r in ROOMS if r not in sock.rooms]
        choice = rng.random()
        if choice < 0.35 and free:
            room = rng.choice(free)
            await self.join(user, sock, room)
            self.log.append(f"{user.name}: join {room} on gw{sock.gateway}")
        elif choice < 0.55 and sock.rooms:
            room = rng.choice(sorted(sock.rooms))
            await sock.client.request("userLeave", {"room": room})
            sock.rooms.discard(room)
            self.log.append(f"{user.name}: leave {room} on gw{sock.gateway}")
        elif choice < 0.75:
            # reconnect as a page does: a new socket elsewhere, its rooms again, then the old closed
            other = (sock.gateway + 1) % len(self.gateways)
            fresh = await self.open(user, other)
            user.sockets.append(fresh)
            for room in sorted(sock.rooms) or [rng.choice(ROOMS)]:
                await self.join(user, fresh, room)
            await self.close(user, sock, abrupt=rng.random() < 0.5)
            self.log.append(f"{user.name}: reconnect gw{sock.gateway} -> gw{other}")
        elif choice < 0.85 and len(user.sockets) < 2:
            # a second tab: the user is present through two sockets at once
            fresh = await self.open(user, rng.randrange(len(self.gateways)))
            user.sockets.append(fresh)
            room = rng.choice(ROOMS)
            await self.join(user, fresh, room)
            self.log.append(f"{user.name}: second socket on gw{fresh.gateway}, join {room}")
        else:
            abrupt = rng.random() < 0.5
            await self.close(user, sock, abrupt=abrupt)
            self.log.append(
                f"{user.name}: close gw{sock.gateway} ({'drop' if abrupt else 'clean'})"
            )

    async def close(self, user: User, sock: Socket, *, abrupt: bool) -> None:
        user.sockets.remove(sock)
        if abrupt:  # the TCP connection dropped, no close handshake
            sock.client.ws.transport.abort()
            sock.client._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sock.client._reader
        else:
            await sock.client.close()

    async def run(self) -> None:
        window = asyncio.Semaphore(IN_FLIGHT)
        # the order is drawn up front, so the seed fixes it whatever the timing
        order = [self.order.randrange(USERS) for _ in range(OPERATIONS)]

        async def one(index: int) -> None:
            user = self.users[index]
            async with window, user.lock:
                await self.step(user)
                await asyncio.sleep(user.rng.uniform(0, 0.02))

        await asyncio.gather(*(one(i) for i in order))

    # the model -----------------------------------------------------------------------------
    def expected(self, room: str) -> list[str]:
        return sorted(u.name for u in self.users if any(room in s.rooms for s in u.sockets))

    def live(self) -> list[tuple[User, Socket]]:
        return [(u, s) for u in self.users for s in u.sockets]

    async def close_all(self) -> None:
        for _, sock in self.live():
            with contextlib.suppress(Exception):
                await sock.client.close()


async def _rosters(gateways: list[ServiceProcess]) -> dict[str, list[list[str]]]:
    """Each room's `GET /api/rooms/{room}/users`, one answer per gateway."""
    out: dict[str, list[list[str]]] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for room in ROOMS:
            out[room] = []
            for gw in gateways:
                reply = await http.get(f"{gw.http}/api/rooms/{room}/users")
                assert reply.status_code == 200, reply.text
                out[room].append(reply.json()["users"])
    return out


def _disagreements(churn: Churn, rosters: dict[str, list[list[str]]]) -> list[str]:
    problems = []
    for room in ROOMS:
        want = churn.expected(room)
        for i, roster in enumerate(rosters[room]):
            if roster != want:
                problems.append(f"{room}: gw{i} roster {roster}, model {want}")
    for user, sock in churn.live():
        for room in sorted(sock.rooms):
            kept = sock.client.lists.get(room)
            if kept != churn.expected(room):
                missing = sorted(set(churn.expected(room)) - set(kept or []))
                extra = sorted(set(kept or []) - set(churn.expected(room)))
                problems.append(
                    f"{room}: {user.name} on gw{sock.gateway} keeps {len(kept or [])} names;"
                    f" missing {missing}, extra {extra}"
                )
    return problems


async def test_lists_equal_the_roster_after_churn(cluster: Cluster) -> None:
    gateways = await cluster.start_stack(gateways=2)
    churn = Churn(gateways, SEED)
    try:
        async with asyncio.timeout(TEST_LIMIT):
            await churn.run()
            assert any(churn.expected(room) for room in ROOMS), "the churn left nobody anywhere"
            problems: list[str] = []
            deadline = asyncio.get_running_loop().time() + QUIET_LIMIT
            while True:  # quiet: presence heartbeats and in-flight events settle
                problems = _disagreements(churn, await _rosters(gateways))
                if not problems or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.5)  # and it stays so (no late event undoes it)
            problems = _disagreements(churn, await _rosters(gateways))
            assert not problems, (
                "lists and rosters disagree after the churn:\n"
                + "\n".join(problems[:40])
                + "\n--- last operations:\n"
                + "\n".join(churn.log[-30:])
            )
    finally:
        await churn.close_all()

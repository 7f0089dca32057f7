"""`roomcast bench reconnect-storm`: SIGKILL a gateway that holds N clients and measure how long
until every one of them is back, joined and recovered by `since` on the other gateways.

1. A deployment of G gateways (default 3). The N users (default 1,000) connect to the first and
   join rooms of about 100; one writer per room joins on the others and posts, so every user
   has a message id to come back from.
2. The writers chat at `--rate` messages per second in all, before, during and after the storm.
3. The first gateway is killed (SIGKILL: no close frame, no `gone` to presence). Each user, once
   its socket drops, reconnects as the web client does (equal-jitter backoff from 1 s) to a
   surviving gateway (the next one on each retry) and joins with its session and `since`.
4. A user is *recovered* when its join's ack says `"recovered": true` and its `msgHistory` came;
   the time is counted from the kill. A user still not recovered `--duration` seconds after the
   kill, or whose join came back without history or with `"recovered": false`, is reported by
   name with why.
5. Afterwards the writers stop, the clients settle, and each recovered user's view is checked:
   every message a writer had acknowledged in its room since everyone joined must have reached
   it once (from `msgHistory` or live): `missing` and `duplicates` count what did not.

One process drives every client (the minimal client of `wsclient`, uvloop where the bench runs
on it); its CPU is in the report, and the services' CPU over the storm by role.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import reconnectreport
from .deploy import Deployment, Monitor, http_get
from .reconnectclient import StormClient
from .runner import Bench, BenchError, Options, drive, publish
from .scenarios import Config, room_name
from .stats import prometheus_counters
from .worker import cpu_seconds

CONNECT_WINDOW = 64
JOIN_WINDOW = 32
WARM_S = 1.0  # writers chat this long before the kill
QUIET_S = 1.0  # no new message for this long: the clients have settled
SETTLE_LIMIT_S = 15.0
PRESENCE_OPS = "roomcast_presence_ops_total"


async def _each(
    clients: Iterable[StormClient], window: int, do: Callable[[StormClient], Awaitable[None]]
) -> None:
    gate = asyncio.Semaphore(window)

    async def one(client: StormClient) -> None:
        async with gate:
            try:
                await do(client)
            except Exception as exc:
                client.error(f"setup_{type(exc).__name__}")
                client.failure = f"setup: {type(exc).__name__}"

    await asyncio.gather(*(one(c) for c in clients))


async def _setup(client: StormClient, url: str) -> None:
    await client.open(url)
    await client.join()


async def _write(writer: StormClient, url: str, interval: float, stop: asyncio.Event) -> None:
    """Open loop: one message every `interval` seconds, whatever the acks do; a writer whose
    socket was closed joins again (a failed message is counted, not retried)."""
    pending: set[asyncio.Task[None]] = set()

    def done(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            writer.error(f"chat_{type(task.exception()).__name__}")

    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        if writer.ws is None or not writer.ws.is_open:
            with contextlib.suppress(Exception):
                await _setup(writer, url)
        n += 1
        task = asyncio.create_task(writer.say(f"storm {n}"))
        pending.add(task)
        task.add_done_callback(done)
        next_at += interval
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*pending, return_exceptions=True)


class Storm:
    def __init__(self, options: Options, config: Config) -> None:
        if config.gateways < 2:
            raise ValueError("reconnect-storm needs at least 2 gateways (one of them is killed)")
        if options.vs or options.target or options.sweep or options.rounds != 1:
            raise ValueError("reconnect-storm takes no --vs, --target, --sweep or --rounds")
        if config.rate <= 0:
            raise ValueError("reconnect-storm needs a positive --rate (the writers' messages)")
        self.options = options
        self.config = config
        self.bench = Bench(options, config)
        self.rng = random.Random(self.bench.run_id)

    async def main(self) -> dict[str, Any]:
        async with self.bench.session(), self.bench.deployed("roomcast") as deployment:
            measured = await self.storm(deployment)
        return self.result(measured)

    async def _join_everyone(
        self, deployment: Deployment
    ) -> tuple[list[StormClient], list[StormClient], dict[str, str]]:
        """The users on the first gateway, a writer per room on the others (by username: its
        gateway), and a first message in every room, so that every user has an id to come
        back from."""
        cfg, rid = self.config, self.bench.run_id
        survivors = deployment.urls[1:]
        users = [
            StormClient(i, f"s{rid}-{i}", room_name(rid, i % cfg.rooms)) for i in range(cfg.clients)
        ]
        writers = [StormClient(r, f"w{rid}-{r}", room_name(rid, r)) for r in range(cfg.rooms)]
        self.bench.progress.phase(f"connect and join {cfg.clients} users", 1)
        await _each(users, CONNECT_WINDOW, lambda u: _setup(u, deployment.urls[0]))
        home = {w.username: survivors[w.index % len(survivors)] for w in writers}
        await _each(writers, JOIN_WINDOW, lambda w: _setup(w, home[w.username]))
        absent = [c.username for c in users + writers if c.session is None]
        if absent:
            raise BenchError(f"{len(absent)} clients could not join before the kill: {absent[:5]}")
        for writer in writers:
            await writer.say("before the storm")
        await self._until(lambda: all(u.last_id for u in users), SETTLE_LIMIT_S)
        return users, writers, home

    async def storm(self, deployment: Deployment) -> dict[str, Any]:
        cfg, progress = self.config, self.bench.progress
        victim = next(s for s in deployment.services if s.role == "gateway")
        survivors = deployment.urls[1:]
        users, writers, home = await self._join_everyone(deployment)
        t_ready = time.monotonic()
        stop = asyncio.Event()
        interval = cfg.rooms / cfg.rate
        writing = [
            asyncio.create_task(_write(w, home[w.username], interval, stop)) for w in writers
        ]
        await asyncio.sleep(WARM_S)
        roles = deployment.pids()
        roles["gateway"] = [p for p in roles.get("gateway", []) if p != victim.pid]
        if self.bench.db is not None and self.bench.db.pid is not None:
            roles["db"] = [self.bench.db.pid]
        monitor = Monitor(roles)
        presence = next(s for s in deployment.services if s.role == "presence")
        ops0 = await _presence_ops(presence.port)
        cpu0, own0 = monitor.cpu(), cpu_seconds()
        t_kill = time.monotonic()
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        deadline = t_kill + cfg.duration
        progress.phase("storm: users recovered", cfg.clients)
        back = asyncio.gather(*(u.come_back(survivors, deadline, self.rng) for u in users))
        while not back.done():
            await asyncio.wait([back], timeout=0.25)
            done = sum(1 for u in users if u.recovered_at is not None)
            progress.update(done, f"{done:,} of {cfg.clients:,} recovered")
        t_end = time.monotonic()
        cpu1, own1 = monitor.cpu(), cpu_seconds()
        ops1 = await _presence_ops(presence.port)
        await asyncio.sleep(WARM_S)
        stop.set()
        await asyncio.gather(*writing)
        await self._settle(users)
        for client in users + writers:
            client.close()
        return {
            "users": users,
            "writers": writers,
            "t_ready": t_ready,
            "t_kill": t_kill,
            "storm_s": t_end - t_kill,
            "server_cpu_by_role_s": {
                role: round(s, 3) for role, s in monitor.by_role(_delta(cpu0, cpu1)).items()
            },
            "loadgen_cpu_s": round(own1 - own0, 3),
            "presence_ops": {
                k: v - ops0.get(k, 0.0) for k, v in ops1.items() if v > ops0.get(k, 0)
            },
        }

    async def _until(self, ready: Callable[[], bool], limit: float) -> None:
        deadline = time.monotonic() + limit
        while not ready() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _settle(self, users: list[StormClient]) -> None:
        """Until no user has seen a new message for `QUIET_S` (at most `SETTLE_LIMIT_S`)."""
        deadline = time.monotonic() + SETTLE_LIMIT_S
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            seen = sum(len(u.seen) for u in users)
            if seen != last:
                last, since = seen, time.monotonic()
            elif time.monotonic() - since >= QUIET_S:
                return
            await asyncio.sleep(0.1)

    def result(self, measured: dict[str, Any]) -> dict[str, Any]:
        base = self.bench.result({})
        entry = reconnectreport.summarize(
            measured["users"], measured["writers"], measured["t_ready"], measured["t_kill"]
        )
        entry["storm_s"] = round(measured["storm_s"], 3)
        entry["server_cpu_by_role_s"] = measured["server_cpu_by_role_s"]
        entry["loadgen_cpu_s"] = measured["loadgen_cpu_s"]
        entry["presence_ops"] = measured["presence_ops"]
        return {
            **{k: base[k] for k in ("tool", "schema", "scenario", "run_id", "machine", "command")},
            "params": {
                **base["params"],
                "senders": self.config.rooms,
                "killed": "the first gateway, SIGKILL",
                "backoff": "equal jitter from 1 s, doubling to 30 s (the web client's)",
            },
            "systems": {"roomcast": entry},
            "ratio": None,
            "notes": [
                "load generator, servers, RabbitMQ and the database share this machine; one "
                "process drives every client (loadgen_cpu_s); times count from the kill",
                *(n for n in base["notes"] if "RATE_PER_SECOND" in n or "batch=1" in n),
            ],
        }


async def _presence_ops(port: int) -> dict[str, float]:
    """Presence's requests handled so far, by op and outcome (what it did during the storm,
    answered in time or not)."""
    text = await http_get("127.0.0.1", port, "/metrics")
    return {} if text is None else prometheus_counters(text, PRESENCE_OPS)


def _delta(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    return {pid: after.get(pid, 0.0) - before.get(pid, 0.0) for pid in after}


def run(options: Options, config: Config) -> dict[str, Any]:
    result = drive(Storm(options, config).main)
    return publish(result, options, reconnectreport.print_table, reconnectreport.plot)

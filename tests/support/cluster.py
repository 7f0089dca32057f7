"""roomcast's services as real processes (`python -m roomcast gateway|history|presence`) on a
real broker and database, for the integration tests.

Each `Cluster` has an exchange, queues and a database of its own, so clusters share the
machine's RabbitMQ without seeing each other; `close()` deletes what it declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aio_pika
import httpx

from .ports import free_port

SECRET = "integration-secret-0123456789"


class ServiceProcess:
    def __init__(
        self, kind: str, port: int, env: dict[str, str], log: Path, args: list[str] | None = None
    ) -> None:
        self.kind, self.port, self.log = kind, port, log
        self._env = env
        self._args = args or [kind, "--port", str(port)]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "roomcast", *self._args],
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def ready(self, timeout: float = 60) -> None:
        """Wait until /readyz answers 200 (the process reached its broker and store)."""
        async with httpx.AsyncClient(timeout=2) as http:
            async with asyncio.timeout(timeout):
                while True:
                    assert self.process is not None
                    if self.process.poll() is not None:
                        raise RuntimeError(f"{self.kind} exited: {self.tail()}")
                    try:
                        if (await http.get(f"{self.http}/readyz")).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"{self.kind} still running after {timeout:g}s") from exc

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit within its drain time."""
        self.signal(signal.SIGTERM)
        try:
            return await self.wait(20)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            return await self.wait(10)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Cluster:
    def __init__(self, workdir: Path, amqp_url: str, mongo_url: str, **settings: str) -> None:
        self.workdir = workdir
        self.amqp_url = amqp_url
        self.exchange = f"test-{uuid.uuid4().hex[:10]}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")},
            "ROOMCAST_AMQP_URL": amqp_url,
            "ROOMCAST_MONGO_URL": mongo_url,
            "ROOMCAST_MONGO_DB": f"db_{uuid.uuid4().hex[:10]}",
            "ROOMCAST_EXCHANGE": self.exchange,
            "ROOMCAST_SECRET": SECRET,
            "ROOMCAST_LOG_FORMAT": "console",
            **{f"ROOMCAST_{k.upper()}": v for k, v in settings.items()},
        }
        self.processes: list[ServiceProcess] = []

    async def start(
        self,
        kind: str,
        *,
        ready: bool = True,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> ServiceProcess:
        """Start `roomcast KIND --port P`, or `roomcast ARGS` with `env` instead of the
        cluster's own environment."""
        port = port or free_port()
        log = self.workdir / f"{kind}-{port}.log"
        service = ServiceProcess(kind, port, env or self.env, log, args)
        service.start()
        self.processes.append(service)
        if ready:
            await service.ready()
        return service

    async def start_stack(self, gateways: int = 2) -> list[ServiceProcess]:
        """history, presence and `gateways` gateways, each ready; returns the gateways."""
        await self.start("history")
        await self.start("presence")
        return [await self.start("gateway") for _ in range(gateways)]

    async def restart(self, service: ServiceProcess) -> None:
        service.start()
        await service.ready()

    async def close(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes), return_exceptions=True)
        await delete_topology(self.amqp_url, self.exchange)

    def logs(self) -> str:
        return "\n\n".join(f"--- {p.kind}:{p.port}\n{p.tail()}" for p in self.processes)


async def delete_topology(amqp_url: str, exchange: str) -> None:
    """Remove the durable queues and exchange a test deployment declared."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in (f"{exchange}.history", f"{exchange}.presence", f"{exchange}.webhooks"):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(name)
        channel = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.exchange_delete(exchange)

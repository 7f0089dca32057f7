"""What the chaos bench runs and breaks: a private RabbitMQ node on free ports (so that
restarting it touches nobody else), a SecantusDB server, and `roomcast history`, `presence` and
G gateways as processes, each with its log in the run's directory.

Every process can be SIGKILLed and started again on the same port; the broker restarts with
`rabbitmqctl stop_app` / `start_app` on the private node only.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from pathlib import Path

from .deploy import BENCH_ENV, Service, _base_env, command, free_port
from .rabbitnode import PrivateRabbitNode

# Logged at info, so that what each service did around a fault can be read afterwards.
CHAOS_ENV = {**BENCH_ENV, "ROOMCAST_LOG_LEVEL": "info", "ROOMCAST_LOG_FORMAT": "json"}


class ChaosStack:
    def __init__(self, workdir: Path, run_id: str, gateways: int) -> None:
        from roomcast.shared.secantus import SecantusServer

        self.workdir = workdir
        self.run_id = run_id
        self.node = PrivateRabbitNode(f"roomcast-chaos-{run_id}")
        self.db = SecantusServer(workdir / "db")
        self.mongo_db = f"chaos_{run_id}"
        self.gateway_count = gateways
        self.services: list[Service] = []

    @property
    def gateways(self) -> list[Service]:
        return [s for s in self.services if s.role == "gateway"]

    def role(self, name: str) -> Service:
        return next(s for s in self.services if s.role == name)

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{s.port}" for s in self.gateways]

    async def start(self) -> None:
        await asyncio.to_thread(self.node.start)
        await self.db.start()
        env = {
            **_base_env(),
            "ROOMCAST_AMQP_URL": self.node.url,
            "ROOMCAST_MONGO_URL": self.db.url,
            "ROOMCAST_MONGO_DB": self.mongo_db,
            "ROOMCAST_EXCHANGE": f"chaos-{self.run_id}",
            "ROOMCAST_SECRET": secrets.token_urlsafe(24),
            **CHAOS_ENV,
        }
        for kind in ["history", "presence"] + ["gateway"] * self.gateway_count:
            port = free_port()
            log = self.workdir / f"{kind}-{port}.log"
            args = command("roomcast", kind, "--port", str(port))
            self.services.append(Service(kind, port, args, env, log, "/readyz"))
        # history and presence first: a gateway's first heartbeat goes to presence
        for group in (self.services[:2], self.services[2:]):
            for service in group:
                service.start()
            await asyncio.gather(*(s.ready() for s in group))

    async def kill(self, service: Service) -> None:
        """SIGKILL, and wait until the process is gone (its port is then free)."""
        process = service.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait)

    async def restart(self, service: Service) -> None:
        """Start it again on its port and wait until it is ready."""
        service.start()
        await service.ready(timeout=60)

    async def restart_broker(self) -> None:
        await asyncio.to_thread(self.node.restart)

    async def stop(self) -> None:
        fronts = self.gateways
        backs = [s for s in self.services if s not in fronts]
        for group in (fronts, backs):
            await asyncio.gather(*(s.stop() for s in group), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.db.stop()
        await asyncio.to_thread(self.node.stop)

    def logs(self) -> str:
        return "\n".join(f"--- {s.role}:{s.port} ({s.log})\n{s.tail()}" for s in self.services)

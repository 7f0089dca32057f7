"""docker-compose.yml, proven rather than only well-formed: its roomcast services started as
local processes with the file's own commands and environment (compose hostnames mapped to
127.0.0.1, named volumes to directories), beside RabbitMQ and SecantusDB, after its one-shot jobs
(the session secret's generator); two gateways rolled one at a time while clients chat, their
sessions signed with the generated secret; no acknowledged message lost, none stored twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roomcast.shared.secantus import SecantusServer
from tests.deploy.compose_env import compose_jobs, roomcast_services
from tests.servers.rabbitmq import machine_broker_url
from tests.support.cluster import Cluster
from tests.support.ports import free_port
from tests.support.traffic import roll_while_chatting

pytestmark = pytest.mark.integration


async def test_compose_services_roll_without_losing_messages(
    tmp_path: Path, secantus_server: SecantusServer
) -> None:
    mongo_port = int(secantus_server.url.rsplit(":", 1)[1])
    compose_env = {"RABBITMQ_USER": "guest", "RABBITMQ_PASSWORD": "guest"}
    volumes = run_jobs(tmp_path, compose_env)
    services = roomcast_services(
        ports={"rabbitmq": 5672, "mongodb": mongo_port}, env=compose_env, volumes=volumes
    )
    roles = {s.role: s for s in services.values()}
    assert {"gateway", "history", "presence"} <= set(roles)
    assert roles["gateway"].replicas >= 2
    cluster = Cluster(tmp_path, machine_broker_url(), secantus_server.url)
    # The file's own secret only: the one the job generated, read through ROOMCAST_SECRET_FILE.
    base_env = {k: v for k, v in cluster.env.items() if k != "ROOMCAST_SECRET"}
    assert roles["gateway"].environment["ROOMCAST_SECRET_FILE"].startswith(str(tmp_path))
    # The one departure from the file: an exchange and database of this test's own, so the
    # machine's shared broker and other tests never see this stack's queues.
    isolation = {
        "ROOMCAST_EXCHANGE": cluster.exchange,
        "ROOMCAST_MONGO_DB": cluster.env["ROOMCAST_MONGO_DB"],
    }
    try:
        started = {}
        for role in ("history", "presence", "gateway"):
            service = roles[role]
            env = {**base_env, **service.environment, **isolation}
            for _ in range(service.replicas):
                port = free_port()
                process = await cluster.start(
                    role, args=service.argv(port=port), env=env, port=port
                )
                started.setdefault(role, []).append(process)
        await roll_while_chatting(started["gateway"], cluster.restart)
    finally:
        await cluster.close()


def run_jobs(tmp_path: Path, compose_env: dict[str, str]) -> dict[str, Path]:
    """Each named volume as a directory, filled by the file's one-shot jobs run as processes
    (as compose runs them before the services that wait for them)."""
    volumes = {"roomcast-secret": tmp_path / "roomcast-secret"}
    for directory in volumes.values():
        directory.mkdir()
    for job in compose_jobs(env=compose_env, volumes=volumes).values():
        assert job.argv[0] == "python", job.argv
        done = subprocess.run(
            [sys.executable, *job.argv[1:]], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{job.name}: {done.stderr}"
    assert any(volumes["roomcast-secret"].iterdir()), "no job wrote the session secret"
    return volumes

"""docker-compose.yml, proven rather than only well-formed: its roomcast services started as
local processes with the file's own commands and environment (compose hostnames mapped to
127.0.0.1), beside RabbitMQ and SecantusDB; two gateways rolled one at a time while clients
chat; no acknowledged message lost, none stored twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomcast.shared.secantus import SecantusServer
from tests.deploy.compose_env import roomcast_services
from tests.servers.rabbitmq import machine_broker_url
from tests.support.cluster import Cluster
from tests.support.ports import free_port
from tests.support.traffic import roll_while_chatting

pytestmark = pytest.mark.integration


async def test_compose_services_roll_without_losing_messages(
    tmp_path: Path, secantus_server: SecantusServer
) -> None:
    mongo_port = int(secantus_server.url.rsplit(":", 1)[1])
    services = roomcast_services(
        ports={"rabbitmq": 5672, "mongodb": mongo_port},
        env={"RABBITMQ_USER": "guest", "RABBITMQ_PASSWORD": "guest"},
    )
    roles = {s.role: s for s in services.values()}
    assert {"gateway", "history", "presence"} <= set(roles)
    assert roles["gateway"].replicas >= 2
    cluster = Cluster(tmp_path, machine_broker_url(), secantus_server.url)
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
            env = {**cluster.env, **service.environment, **isolation}
            for _ in range(service.replicas):
                port = free_port()
                process = await cluster.start(
                    role, args=service.argv(port=port), env=env, port=port
                )
                started.setdefault(role, []).append(process)
        await roll_while_chatting(started["gateway"], cluster.restart)
    finally:
        await cluster.close()

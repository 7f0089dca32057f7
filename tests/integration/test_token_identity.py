"""Signed-in users across processes (PROTOCOL.md 2.4): two gateways, presence and history on
RabbitMQ and SecantusDB. A token subject is one user on every gateway; its name is nobody
else's while it is online, after it left, and after presence restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roomcast.shared.secantus import SecantusServer
from tests.servers.rabbitmq import machine_broker_url
from tests.support.chat_client import ChatClient, RefusedError
from tests.support.cluster import Cluster
from tests.support.tokens import JWT_SECRET, hs256

pytestmark = pytest.mark.integration


async def _refusal(client: ChatClient, username: str) -> tuple[str, str]:
    with pytest.raises(RefusedError) as refused:
        await client.request("userJoin", {"username": username, "room": "main"})
    return refused.value.code, refused.value.frame["data"]["message"]


async def _until_kept_for_subject(client: ChatClient, username: str) -> None:
    async with asyncio.timeout(20):
        while True:
            code, message = await _refusal(client, username)
            assert code == "username_taken"
            if "signed-in user" in message:
                return
            await asyncio.sleep(0.1)


async def test_a_subject_is_one_user_on_every_gateway_and_keeps_its_name(
    tmp_path: Path, secantus_server: SecantusServer, connect
) -> None:
    cluster = Cluster(
        tmp_path,
        machine_broker_url(),
        secantus_server.url,
        heartbeat_interval="1",
        jwt_secret=JWT_SECRET,
        name_grace_seconds="0",
    )
    try:
        gw1, gw2 = await cluster.start_stack()
        presence = cluster.processes[1]
        assert presence.kind == "presence"
        token = hs256(sub="u-alice", name="alice")
        tab1, tab2 = await connect(gw1.ws), await connect(gw2.ws)
        assert (await tab1.request("userJoin", {"token": token, "room": "main"}))["username"] == (
            "alice"
        )
        # the same subject on the other gateway is the same user; anyone else is refused
        assert (await tab2.request("userJoin", {"token": token, "room": "main"}))["username"] == (
            "alice"
        )
        anonymous = await connect(gw2.ws)
        assert (await _refusal(anonymous, "alice"))[0] == "username_taken"
        await tab1.close()
        await tab2.close()
        # gone from both gateways, no grace period: the name stays the subject's
        await _until_kept_for_subject(anonymous, "alice")
        # presence restarts: what it kept is in the store
        await presence.stop()
        await cluster.restart(presence)
        await _until_kept_for_subject(anonymous, "alice")
        back = await connect(gw1.ws)
        ack = await back.request("userJoin", {"token": token, "room": "main"})
        assert ack["username"] == "alice"
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        await cluster.close()

"""`roomcast dev` with ROOMCAST_AUTH=token, as a process (protocol 2.4): anonymous joins are
refused, tokens sign in, an expired token closes the socket with 4001; a token mode without a
key stops the process at start with one line naming the variables."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.chat_client import ChatClient, RefusedError
from tests.support.dev_process import DevProcess, dev_command, dev_env
from tests.support.ports import free_port
from tests.support.tokens import JWT_SECRET, hs256

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def token_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    base = tmp_path_factory.mktemp("token-dev")
    dev = DevProcess(base / "data", free_port(), base / "dev.log")
    dev.env = {"ROOMCAST_AUTH": "token", "ROOMCAST_JWT_SECRET": JWT_SECRET}
    dev.start()
    try:
        dev.wait_ready()
        yield dev
    finally:
        dev.kill()


async def test_token_mode_on_roomcast_dev(token_dev: DevProcess) -> None:
    anonymous = await ChatClient.connect(token_dev.ws)
    alice = await ChatClient.connect(token_dev.ws)
    try:
        with pytest.raises(RefusedError) as err:
            await anonymous.request("userJoin", {"username": "anon", "room": "main"})
        assert err.value.code == "unauthorized"
        ack = await alice.request(
            "userJoin", {"token": hs256(sub="u-a", name="alice", ttl=3), "room": "main"}
        )
        assert ack["username"] == "alice"
        assert await asyncio.wait_for(alice.closed, 15) == 4001
        [error] = alice.received("error")
        assert error["data"]["code"] == "unauthorized"
    finally:
        await anonymous.close()
        await alice.close()


def test_token_mode_without_a_key_stops_at_start(tmp_path: Path) -> None:
    done = subprocess.run(
        dev_command("--port", str(free_port()), "--data-dir", str(tmp_path / "data")),
        env=dev_env(ROOMCAST_AUTH="token"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "roomcast: error: ROOMCAST_AUTH=token needs ROOMCAST_JWT_SECRET or ROOMCAST_JWKS_URL "
        "to verify tokens with"
    ]

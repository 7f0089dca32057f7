"""`SecantusServer`: the SecantusDB child process that `roomcast dev` and the tests run."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from roomcast.shared.secantus import SecantusError, SecantusServer

pytestmark = pytest.mark.integration


async def count_docs(url: str) -> int:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url)
    try:
        return await client["probe"]["docs"].count_documents({})
    finally:
        await client.close()


async def insert_doc(url: str) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url)
    try:
        await client["probe"]["docs"].insert_one({"x": 1})
    finally:
        await client.close()


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_start_answers_and_stop_ends_the_process(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server = SecantusServer(tmp_path / "db")
    await server.stop()  # not started: nothing to do

    await server.start()
    try:
        assert server.running
        assert server.url == f"mongodb://127.0.0.1:{server.port}"
        assert server.port > 0
        await insert_doc(server.url)
        assert await count_docs(server.url) == 1
        with pytest.raises(SecantusError, match="already running"):
            await server.start()
    finally:
        await server.stop()

    assert not server.running
    assert server.pid is None
    await server.stop()  # idempotent
    # The child wrote to its log in the data dir, not to our terminal.
    assert "secantus listening on 127.0.0.1" in server.log_path.read_text()
    assert server.log_path.parent == tmp_path / "db"
    out, err = capfd.readouterr()
    assert "secantus listening" not in out + err


async def test_context_manager_and_restart_keep_the_data(tmp_path: Path) -> None:
    async with SecantusServer(tmp_path / "db") as server:
        await insert_doc(server.url)
        first_pid = server.pid
        await server.restart()
        assert server.pid != first_pid
        assert await count_docs(server.url) == 1
    assert not server.running

    async with SecantusServer(tmp_path / "db") as again:
        assert await count_docs(again.url) == 1


async def test_a_second_server_on_a_locked_data_dir_fails_clearly(tmp_path: Path) -> None:
    async with SecantusServer(tmp_path / "db") as first:
        second = SecantusServer(tmp_path / "db", start_timeout=3.0)
        with pytest.raises(SecantusError, match="locked by another process"):
            await second.start()
        assert not second.running
        assert first.running
        await insert_doc(first.url)


async def test_start_waits_for_a_server_that_is_still_exiting(tmp_path: Path) -> None:
    first = SecantusServer(tmp_path / "db")
    await first.start()
    await insert_doc(first.url)
    assert first.pid is not None
    os.kill(first.pid, signal.SIGTERM)  # stopping, not yet gone: it still holds the lock

    second = SecantusServer(tmp_path / "db")
    try:
        await second.start()
        assert await count_docs(second.url) == 1
    finally:
        await second.stop()
        await first.stop()


async def test_a_taken_fixed_port_is_an_error_with_the_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = SecantusServer(tmp_path / "db", port=taken.getsockname()[1])
        with pytest.raises(SecantusError, match="Address already in use"):
            await server.start()
    assert not server.running


async def test_a_child_that_cannot_start_is_an_error_with_the_log(tmp_path: Path) -> None:
    server = SecantusServer(tmp_path / "db", extra_args=("--no-such-flag",))
    with pytest.raises(SecantusError, match="exited with code 2") as caught:
        await server.start()
    assert "unrecognized arguments" in str(caught.value)
    assert not server.running


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_the_child_does_not_outlive_its_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from roomcast.shared.secantus import SecantusServer

        async def main() -> None:
            server = SecantusServer({str(tmp_path / "db")!r})
            await server.start()
            print(server.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    out, _ = await parent.communicate()
    assert parent.returncode == -signal.SIGKILL
    child = int(out.split()[-1])

    async with asyncio.timeout(60):  # a bound, not a measurement
        while alive(child):  # noqa: ASYNC110 - another process, nothing to await
            await asyncio.sleep(0.1)
    # The orphan shut down cleanly: the data dir opens again.
    async with SecantusServer(tmp_path / "db") as server:
        assert await count_docs(server.url) == 0

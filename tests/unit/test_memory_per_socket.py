"""The gateway's Python heap per idle joined socket (issue 11: at most 24 KiB of RSS per socket).

Bytes, not time: tracemalloc counts what the server's process allocated between before and
after N sockets joined rooms of 10 and went idle. The clients run in a child process (the
bench's minimal client), so nothing of theirs is counted; the in-process presence and history
services are left out too (they run elsewhere in production). Measured at 19.7-19.8 KB after the
idle-memory cuts (about 27 KB before them); the bound leaves a margin for the noise of dict
resizes and caches, and fails on a clear regression, such as a task or an asyncio.Queue per
socket (each about 1.3 and 3.3 KB).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import sys
import tracemalloc
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SOCKETS = 200
BOUND = 22_000  # bytes of Python heap per idle joined socket
ROOT = Path(__file__).resolve().parents[2]

CLIENTS = """
import asyncio, json, sys
from roomcast.bench.wsclient import connect

async def join(url: str, username: str, room: str) -> object:
    answered = asyncio.get_running_loop().create_future()

    def on_text(text: str, now: int) -> None:
        if not answered.done() and '"ref"' in text:
            answered.set_result(text)

    socket = await connect(url + "/ws", on_text)
    frame = {"username": username, "room": room}
    socket.send_text(json.dumps({"event": "userJoin", "data": frame, "ref": "j"}))
    reply = json.loads(await asyncio.wait_for(answered, 60))
    assert reply["event"] == "ack", reply
    return socket

async def main(url: str, n: int, prefix: str) -> None:
    sockets = []
    for start in range(0, n, 10):  # a room of 10 at a time
        room = f"{prefix}{start // 10}"
        names = [f"{prefix}{i}" for i in range(start, min(n, start + 10))]
        sockets += await asyncio.gather(*(join(url, name, room) for name in names))
    print("joined", flush=True)
    sys.stdin.readline()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""

_NOT_THE_GATEWAYS = (
    f"{os.sep}services{os.sep}presence{os.sep}",
    f"{os.sep}services{os.sep}history{os.sep}",
)


def _owner(trace: tracemalloc.Traceback) -> str:
    for frame in reversed(list(trace)):  # innermost first
        for part in ("hypercorn", "wsproto", "h11", "services", "shared", "asyncio", "quart"):
            if f"{os.sep}{part}{os.sep}" in frame.filename:
                return part
    return "other"


async def _clients(url: str, n: int, prefix: str) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENTS,
        url,
        str(n),
        prefix,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 120)
    assert line == b"joined\n", "the clients did not all join"
    return child


async def _release(child: asyncio.subprocess.Process) -> None:
    assert child.stdin is not None
    child.stdin.write(b"\n")
    await child.stdin.drain()
    await asyncio.wait_for(child.wait(), 30)


async def test_an_idle_joined_socket_holds_less_than_the_bound(server) -> None:
    await _release(await _clients(server.url, 20, "warm"))  # first-use caches, not per socket
    await asyncio.sleep(0.5)
    gc.collect()
    tracemalloc.start(30)
    try:
        before = tracemalloc.take_snapshot()
        child = await _clients(server.url, SOCKETS, "idle")
        await asyncio.sleep(0.5)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    try:
        by_owner: collections.Counter[str] = collections.Counter()
        for stat in after.compare_to(before, "traceback"):
            if any(part in f.filename for f in stat.traceback for part in _NOT_THE_GATEWAYS):
                continue
            by_owner[_owner(stat.traceback)] += stat.size_diff
        per_socket = sum(by_owner.values()) / SOCKETS
        owners = {k: round(v / SOCKETS) for k, v in by_owner.most_common()}
        assert per_socket <= BOUND, f"{per_socket:.0f} B per idle socket: {owners}"
    finally:
        await _release(child)

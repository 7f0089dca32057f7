"""The presence audit of `roomcast bench chaos` (PROTOCOL.md 2.1): once the run is quiet, the
user list each client keeps (its `activeUsers` snapshot, then each `userJoin`/`userLeave` of
the room in order) must equal `GET /api/rooms/{room}/users`, on every gateway.

A fault that loses a presence event leaves a client with a ghost (a user who left long ago) or
without someone who is there, for good: nothing in 2.1 sends the list again. Presence itself
settles within a gateway expiry after the last fault (a killed gateway's users are forgotten
then), so the comparison is retried for a while and what still differs is reported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from .deploy import http_get

EXAMPLES = 10


class KeepsLists(Protocol):
    name: str

    def user_lists(self) -> dict[str, list[str]]: ...


async def rosters(ports: Sequence[int], rooms: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """room -> gateway port -> the room's users as that gateway answers (a room that did not
    answer is left out)."""
    found: dict[str, dict[str, list[str]]] = {}
    for room in rooms:
        for port in ports:
            body = await http_get("127.0.0.1", port, f"/api/rooms/{room}/users", timeout=5.0)
            if body is not None:
                found.setdefault(room, {})[str(port)] = sorted(orjson.loads(body)["users"])
    return found


def differences(
    clients: Sequence[KeepsLists], found: dict[str, dict[str, list[str]]]
) -> list[dict[str, Any]]:
    """Every (client, room) whose kept list is not what the gateways answer, and every room the
    gateways disagree on."""
    out: list[dict[str, Any]] = []
    for room, by_port in found.items():
        answers = {tuple(users) for users in by_port.values()}
        if len(answers) > 1:
            out.append({"room": room, "gateways_disagree": by_port})
    for client in clients:
        for room, kept in client.user_lists().items():
            answered = found.get(room)
            if not answered:
                continue
            truth = set(next(iter(answered.values())))
            if set(kept) != truth:
                out.append(
                    {
                        "client": client.name,
                        "room": room,
                        "ghosts": sorted(set(kept) - truth),
                        "missing": sorted(truth - set(kept)),
                    }
                )
    return out


async def audit_rosters(
    clients: Sequence[KeepsLists], ports: Sequence[int], rooms: Sequence[str], limit: float
) -> dict[str, Any]:
    """Compare until nothing differs or `limit` seconds passed; the last comparison counts."""
    deadline = time.monotonic() + limit
    while True:
        found = await rosters(ports, rooms)
        diffs = differences(clients, found)
        if (not diffs and len(found) == len(rooms)) or time.monotonic() > deadline:
            return {
                "presence_mismatches": len(diffs),
                "presence_examples": diffs[:EXAMPLES],
                "rooms_answered": len(found),
            }
        await asyncio.sleep(0.5)

"""The chaos bench's presence audit (roomcast/bench/chaosroster.py): a client's list kept as
2.1 says (snapshot, then joins and leaves) against the gateways' rosters."""

from __future__ import annotations

import pytest

from roomcast.bench.chaosclient import ChaosClient, Clock
from roomcast.bench.chaosroster import differences

pytestmark = pytest.mark.unit


def client_with(events: list[tuple[str, object]], name: str = "r0") -> ChaosClient:
    client = ChaosClient(name, ["ws://127.0.0.1:1"], ["room0"], clock=Clock())
    for event, data in events:
        client._on_event({"event": event, "room": "room0", "data": data})
    return client


def test_a_client_keeps_the_snapshot_then_joins_and_leaves() -> None:
    client = client_with(
        [
            ("activeUsers", ["a", "b"]),
            ("userJoin", {"username": "c", "room": "room0"}),
            ("userLeave", {"username": "a", "room": "room0"}),
            ("userLeave", {"username": "nobody", "room": "room0"}),
            ("userJoin", {"username": "b", "room": "room0"}),  # already listed
        ]
    )
    assert client.user_lists() == {"room0": ["b", "c"]}
    # a new socket's join brings a new snapshot, which replaces the list
    client._on_event({"event": "activeUsers", "room": "room0", "data": ["d"]})
    assert client.user_lists() == {"room0": ["d"]}


def test_ghosts_missing_users_and_disagreeing_gateways_are_reported() -> None:
    ghost = client_with([("activeUsers", ["a", "gone"])], "r0")
    short = client_with([("activeUsers", ["a"])], "r1")
    right = client_with([("activeUsers", ["a", "b"])], "r2")
    found = {"room0": {"8001": ["a", "b"], "8002": ["a", "b"]}}
    assert differences([ghost, short, right], found) == [
        {"client": "r0", "room": "room0", "ghosts": ["gone"], "missing": ["b"]},
        {"client": "r1", "room": "room0", "ghosts": [], "missing": ["b"]},
    ]
    split = {"room0": {"8001": ["a", "b"], "8002": ["a"]}}
    assert differences([right], split)[0] == {"room": "room0", "gateways_disagree": split["room0"]}
    assert differences([right], found) == []
    assert differences([right], {}) == []  # a room nobody answered for is not judged

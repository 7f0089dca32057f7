"""The verdict of a chaos run, from what the clients recorded and what the store holds. Pure.

- acked: messages whose `updateChat` was acknowledged (by id: a re-sent message counts once).
- stored: the messages of the bench's rooms in the store at the end.
- lost: acked but not stored. The protocol's promise: must be 0.
- duplicated: stored twice (two stored messages with one body: every body names its client id),
  plus shown twice to a reader: an `updateChat` of an id it had already been shown, or a
  `msgHistory` answering `since` with `"recovered": true` that repeats one.
- gaps: per reader, the stored messages of its rooms that it never saw (pushed, or fetched when
  paging back), after every recovery it made. The readers joined before anyone wrote, so every
  stored message of their rooms was sent after they first joined.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from .chaosclient import ChaosClient

EXAMPLES = 5


def audit(
    stored: Mapping[str, list[dict[str, Any]]], clients: list[ChaosClient], t0_unix: float = 0.0
) -> dict[str, Any]:
    """`stored`: room -> its messages in store order; `t0_unix`: the run's start, to say when
    (in the run's seconds, by the server's clock) a missing message was posted."""
    writers = [c for c in clients if c.writer]
    readers = [c for c in clients if not c.writer]
    acked = {mid for c in writers for mid in c.acked}
    stored_ids = [m["id"] for messages in stored.values() for m in messages]
    unique_ids = set(stored_ids)
    bodies = Counter(m["body"] for messages in stored.values() for m in messages)
    stored_twice = sum(n - 1 for n in bodies.values() if n > 1)
    stored_twice += len(stored_ids) - len(unique_ids)
    lost = sorted(acked - unique_ids)

    per_reader: dict[str, Any] = {}
    gaps_total = 0
    shown_live = shown_history = 0
    for reader in readers:
        rooms: dict[str, int] = {}
        examples: list[str] = []
        posted_at: list[float] = []
        for room in reader.rooms:
            view = reader.views[room]
            missing = [m for m in stored.get(room, []) if not view.seen(m["id"])]
            rooms[room] = len(missing)
            for m in missing[: EXAMPLES - len(examples)]:
                examples.append(m["id"])
                posted_at.append(round(m["time"] / 1000 - t0_unix, 2))
        live = sum(len(reader.views[r].live_dups) for r in reader.rooms)
        history = sum(len(reader.views[r].history_dups) for r in reader.rooms)
        shown_live += live
        shown_history += history
        gaps = sum(rooms.values())
        gaps_total += gaps
        per_reader[reader.name] = {
            "gaps": gaps,
            "by_room": rooms,
            "examples": examples,
            "examples_posted_at_s": posted_at,
            "shown_twice": live + history,
            "shown_twice_examples": [
                i
                for r in reader.rooms
                for i in reader.views[r].live_dups + reader.views[r].history_dups
            ][:EXAMPLES],
            "paged": sum(len(reader.views[r].paged) for r in reader.rooms),
        }
    unacked = sum(len(c.pending) for c in writers)
    return {
        "acked": len(acked),
        "stored": len(unique_ids),
        "lost": len(lost),
        "lost_examples": lost[:20],
        "stored_not_acked": len(unique_ids - acked),
        "unacked_at_end": unacked,
        "duplicated": stored_twice + shown_live + shown_history,
        "duplicates": {
            "stored_twice": stored_twice,
            "shown_twice_live": shown_live,
            "shown_twice_history": shown_history,
        },
        "gaps": gaps_total,
        "readers": per_reader,
    }

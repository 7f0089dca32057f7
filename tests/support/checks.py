"""Assertions shared by tests at several levels."""

from __future__ import annotations

from tests.support.chat_client import ChatClient


async def assert_no_gap_no_duplicate(joiner: ChatClient, sent: dict[str, list[str]]) -> None:
    """The joiner's history-then-live view holds, for each sender, a contiguous tail of what the
    sender had acknowledged, in order, each message once (senders interleave freely)."""
    last = [ids[-1] for ids in sent.values() if ids]
    for message_id in last:
        await joiner.wait_for(
            lambda f, m=message_id: f["event"] == "updateChat" and f["data"]["id"] == m
        )
    history = [m["id"] for m in joiner.received("msgHistory", "main")[0]["data"]]
    live = [f["data"]["id"] for f in joiner.received("updateChat", "main")]
    seen = history + live
    assert len(seen) == len(set(seen)), "a message arrived twice"
    for sender, ids in sent.items():
        mine = [m for m in seen if m in set(ids)]
        if not mine:
            continue
        start = ids.index(mine[0])
        order = [(ids.index(m), "h" if m in history else "l") for m in mine]
        assert mine == ids[start:], (
            f"{sender}: a message is missing or out of order for {joiner.username} "
            f"({len(history)} in history; sent index, h/l for history/live: {order})"
        )

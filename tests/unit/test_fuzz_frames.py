"""Hypothesis drives random and mutated frames at a gateway over a real WebSocket.

Frames start valid (every client event of PROTOCOL.md) and are mutated: wrong types, odd or
huge Unicode, nested objects, missing and extra fields, random event names, refs of every
kind, lone surrogates and NaN in the JSON text, absurd nesting, binary frames. Properties:
- the socket is never closed (all frames stay under the size limit; the documented 1009 close
  for oversize frames has its own test below);
- every frame whose `ref` the server can read (I-JSON text, RFC 7493: no lone surrogates, finite
  numbers; an object; a 1-64 character string `ref`) gets exactly one `ack` or `error` with that
  ref, and no other ref is ever answered;
- every `error` carries a documented code and a message;
- nothing is logged as an error or exception;
- a bystander in the same room keeps working: it still gets a message sent after the fuzzing.

Hypothesis runs in a worker thread with a synchronous WebSocket client (its tests cannot be
coroutines); the server and the bystanders stay on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections import Counter
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from websockets.sync.client import connect as sync_connect

from tests.support.chat_client import ChatClient
from tests.support.inprocess import Server
from tests.unit.test_fuzz_http import DOCUMENTED_CODES

MAX_REF = 64
WAIT = 10.0  # seconds a fuzzed socket may take to answer its frames
FRAME_BUDGET = 60_000  # bytes: under the 64 KiB limit, so no frame earns the 1009 close

# -- frames ------------------------------------------------------------------------------------

valid_names = st.from_regex(r"fz[a-z0-9_-]{1,12}", fullmatch=True)
names = st.one_of(
    valid_names,
    valid_names,
    st.sampled_from(["main", "lobby", "alice", "bob", "fuzz_room", "Ωmega", "a-b_c"]),
    st.text(max_size=70),
    st.text(st.characters(categories=["L", "N"]), min_size=60, max_size=70),
)
odd_text = st.one_of(
    st.sampled_from(["hello", "  padded  ", "👍", "ok"]),
    st.text(max_size=40),
    st.text(st.characters(categories=["Cf", "Cc", "Zs", "Mn", "Co"]), max_size=20),
    st.sampled_from(["", " ", "\u202e", "\ufeff", "\x00", "💬" * 40, "a" * 5000]),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**63, max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 2**53 + 1, 1e308, -1e308, 5e-324]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)
refs = st.one_of(
    st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
    st.text(min_size=1, max_size=MAX_REF),
    st.text(min_size=1, max_size=MAX_REF),
    st.sampled_from(["", "r" * MAX_REF, "r" * (MAX_REF + 1), " ", "💬" * MAX_REF]),
    st.text(min_size=MAX_REF + 1, max_size=90),
    anything,
)
message_ids = st.one_of(st.text(max_size=70), st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True))

PAYLOADS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "userJoin": st.fixed_dictionaries(
        {"username": names, "room": names},
        optional={"session": odd_text, "since": message_ids, "sinceRev": numbers},
    ),
    "userTyping": st.fixed_dictionaries({"username": names, "room": names}),
    "updateChat": st.fixed_dictionaries(
        {"username": names, "room": names, "body": odd_text, "time": numbers},
        optional={"id": message_ids},
    ),
    "newRoom": st.fixed_dictionaries({"username2": names, "room": names}),
    "userLeave": st.fixed_dictionaries({"room": names}),
    "editChat": st.fixed_dictionaries({"room": names, "id": message_ids, "body": odd_text}),
    "deleteChat": st.fixed_dictionaries({"room": names, "id": message_ids}),
    "react": st.fixed_dictionaries(
        {"room": names, "id": message_ids, "emoji": odd_text, "add": st.booleans()}
    ),
    "markRead": st.fixed_dictionaries({"room": names, "id": message_ids}),
}


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    """A client frame as data: valid in shape, then mutated."""
    event = draw(st.sampled_from(sorted(PAYLOADS)))
    data: Any = dict(draw(PAYLOADS[event]))
    frame: dict[str, Any] = {"event": event, "data": data}
    if draw(st.booleans()):
        frame["ref"] = draw(refs)
    for _ in range(draw(st.integers(0, 3))):
        mutation = draw(st.sampled_from(["drop", "retype", "extra", "event", "data", "top"]))
        if mutation == "drop" and data and isinstance(data, dict):
            data.pop(draw(st.sampled_from(sorted(data))))
        elif mutation == "retype" and data and isinstance(data, dict):
            data[draw(st.sampled_from(sorted(data)))] = draw(anything)
        elif mutation == "extra" and isinstance(data, dict):
            data[draw(odd_text)] = draw(anything)
        elif mutation == "event":
            frame["event"] = draw(odd_text | anything)
        elif mutation == "data":
            frame["data"] = data = draw(anything)
        elif mutation == "top":
            frame[draw(odd_text)] = draw(anything)
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([[frame], frame["data"], None, "frame", 7]))
    return frame


@st.composite
def texts(draw: st.DrawFn) -> str:
    """A text frame: an envelope as JSON, sometimes damaged as text."""
    value = draw(envelopes())
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    damage = draw(st.sampled_from(["none"] * 6 + ["cut", "surrogate", "nan", "nest", "bom", "pad"]))
    if damage == "cut" and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif damage == "surrogate":
        text = text.replace('"event"', '"\\ud800event"', 1)
    elif damage == "nan":
        text = text[:-1] + ', "n": NaN}' if text.endswith("}") else text + "NaN"
    elif damage == "nest":
        depth = draw(st.sampled_from([40, 3000]))
        nested = "[" * depth + "]" * depth
        text = text[:-1] + f', "deep": {nested}}}' if text.endswith("}") else nested
    elif damage == "bom":
        text = "\ufeff" + text
    elif damage == "pad":
        text = " \n\t" + text + "\n "
    return text


frames = st.one_of(texts(), texts(), texts(), st.binary(max_size=64)).filter(
    lambda f: len(f if isinstance(f, bytes) else f.encode()) <= FRAME_BUDGET
)

joins = st.tuples(st.sampled_from(["main", "fzlobby"]), st.integers(0, 9999))


def join_frame(room: str, number: int) -> str:
    """A valid join under a name of its own (a name just used stays reserved for its session)."""
    user = f"fz{uuid.uuid4().hex[:12]}"
    data = {"username": user, "room": room}
    return json.dumps({"event": "userJoin", "data": data, "ref": f"join{number}"})


# -- the oracle ----------------------------------------------------------------------------------


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _refuse(text: str) -> None:
    raise ValueError(text)


def _clean(value: Any) -> bool:
    """No lone surrogate in any string (I-JSON)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, list):
        return all(_clean(item) for item in value)
    if isinstance(value, dict):
        return all(_clean(k) and _clean(v) for k, v in value.items())
    return True


def readable_ref(frame: str | bytes) -> str | None:
    """The ref a server must answer: the frame is I-JSON text, an object, with a 1-64 character
    string `ref`. None otherwise (then only an error without a ref may answer it)."""
    if isinstance(frame, bytes):
        return None
    try:
        value = json.loads(
            frame, parse_constant=_refuse, parse_float=_finite, parse_int=lambda s: _finite(s)
        )
    except (ValueError, RecursionError, OverflowError):
        return None
    if not isinstance(value, dict) or not _clean(value):
        return None
    ref = value.get("ref")
    return ref if isinstance(ref, str) and 0 < len(ref) <= MAX_REF else None


# -- the run -----------------------------------------------------------------------------------


def exchange(url: str, batch: list[str | bytes]) -> None:
    """Send `batch` on a fresh socket and check its answers."""
    expected = Counter(ref for ref in map(readable_ref, batch) if ref is not None)
    sentinel = f"sentinel-{uuid.uuid4()}"
    answered: Counter[str] = Counter()
    problems: list[str] = []
    with sync_connect(url, open_timeout=WAIT, max_size=2**24) as ws:
        for frame in batch:
            ws.send(frame)
        sent_sentinel = False
        while True:
            if not sent_sentinel and all(answered[r] >= n for r, n in expected.items()):
                # everything owed has come: one more frame, so late duplicates show up too
                ws.send(json.dumps({"event": "userLeave", "data": {"room": "x"}, "ref": sentinel}))
                sent_sentinel = True
            try:
                raw = ws.recv(timeout=WAIT)
            except TimeoutError:
                missing = {r: n - answered[r] for r, n in expected.items() if answered[r] < n}
                raise AssertionError(f"no answer within {WAIT}s for refs {missing}") from None
            except websockets.ConnectionClosed as closed:
                raise AssertionError(f"the socket was closed: {closed}") from None
            assert isinstance(raw, str), "the server sent a binary frame"
            done = False
            for line in raw.split("\n"):
                message = json.loads(line)
                if message.get("event") == "error":
                    data = message.get("data") or {}
                    if data.get("code") not in DOCUMENTED_CODES or not data.get("message"):
                        problems.append(f"undocumented error {message}")
                if message.get("event") in ("ack", "error") and "ref" in message:
                    if message["ref"] == sentinel:
                        done = True
                    else:
                        answered[message["ref"]] += 1
            if done:
                break
    extra = {r: n - expected[r] for r, n in answered.items() if n > expected[r]}
    assert not extra, f"answered more than once, or never sent readable: {extra}"
    assert not problems, problems


def fuzz(url: str) -> int:
    runs = 0

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(joined=st.none() | joins, batch=st.lists(frames, min_size=1, max_size=6))
    def run(joined: tuple[str, int] | None, batch: list[str | bytes]) -> None:
        nonlocal runs
        runs += 1
        # most often the socket has joined first, so frames reach past `not_joined`
        exchange(url, batch if joined is None else [join_frame(*joined), *batch])

    run()
    return runs


def serious(logs: list[dict[str, Any]], records: list[logging.LogRecord]) -> list[str]:
    found = [
        f"{entry.get('log_level')}: {entry.get('event')}"
        for entry in logs
        if entry.get("log_level") in {"error", "critical", "exception"} or entry.get("exc_info")
    ]
    found += [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in records
        if r.levelno >= logging.ERROR or r.exc_info
    ]
    return found


async def test_no_frame_kills_a_socket_or_disturbs_the_room(
    server: Server, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bystander: ChatClient = await connect()
    await bystander.join("zz_bystander", "main")
    caplog.set_level(logging.WARNING)
    with capture_logs() as logs:
        runs = await asyncio.to_thread(fuzz, f"{server.url}/ws")
    assert runs >= 150
    assert serious(logs, caplog.records) == []

    writer: ChatClient = await connect()
    await writer.join("zz_writer", "main")
    body = f"after the fuzzing {uuid.uuid4()}"
    await writer.say("main", body)
    received = await bystander.wait_for(
        lambda f: f["event"] == "updateChat" and f["data"]["body"] == body, timeout=10
    )
    assert received["data"]["username"] == "zz_writer"
    assert not bystander.closed.done()


def test_the_oracle_tells_readable_refs_apart() -> None:
    assert readable_ref('{"event":"x","ref":"a"}') == "a"
    assert readable_ref(' {"ref":"' + "r" * 64 + '"} ') == "r" * 64
    for unreadable in [
        '{"ref":"' + "r" * 65 + '"}',
        '{"ref":""}',
        '{"ref":7}',
        '[{"ref":"a"}]',
        '{"ref":"a","n":NaN}',
        '{"ref":"a","n":1e400}',
        '{"ref":"a","s":"\\ud800"}',
        '{"ref":"a","d":' + "[" * 3000 + "]" * 3000 + "}",
        '{"ref":"a"',
        b'{"ref":"a"}',
    ]:
        assert readable_ref(unreadable) is None, unreadable


@pytest.mark.settings(max_frame_bytes=1024)
@pytest.mark.parametrize("size", [1025, 4096, 70_000])
async def test_an_oversize_frame_is_the_one_documented_close(
    server: Server, connect: Any, size: int
) -> None:
    bystander: ChatClient = await connect()
    await bystander.join("zz_bystander", "main")
    client: ChatClient = await connect()
    await client.join("zz_big", "main")
    body = "é" * size
    await client.send_raw(json.dumps({"event": "updateChat", "data": {"body": body}, "ref": "big"}))
    async with asyncio.timeout(10):
        code = await client.closed
    assert code == 1009
    writer: ChatClient = await connect()
    await writer.join("zz_writer", "main")
    await writer.say("main", "still here")
    await bystander.wait_for(
        lambda f: f["event"] == "updateChat" and f["data"]["body"] == "still here"
    )

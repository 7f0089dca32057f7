"""Hostile, malformed and excessive input (PROTOCOL.md, "Guarantees": no input a client sends,
however malformed, stops the server or affects other connections; every refused frame gets an
`error` that says why, with the frame's `ref` when it had one), plus the operational surface:
WebSocket compression, health, metrics, OpenAPI, docs and the web client's CSP.

Everything runs on the in-process server (in-memory bus) over real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import socket
import struct
import uuid
from collections import Counter, defaultdict
from typing import Any, get_args
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from roomcast.gateway.protocol import ErrorCode
from tests.support.chat_client import ChatClient, Frame

pytestmark = pytest.mark.unit

ERROR_CODES = set(get_args(ErrorCode))
MAX_FRAME = 64 * 1024  # Settings.max_frame_bytes default


# helpers --------------------------------------------------------------------------------------
def frame_text(event: Any, data: Any, ref: Any = None, **extra: Any) -> str:
    frame: dict[str, Any] = {"event": event, "data": data, **extra}
    if ref is not None:
        frame["ref"] = ref
    return json.dumps(frame)


def error_problems(
    frame: Frame | None, code: str | set[str], ref: str | None, case: str
) -> list[str]:
    """What is wrong with `frame` as the error answering `case` (empty when all is right)."""
    codes = {code} if isinstance(code, str) else code
    if frame is None:
        return [f"{case}: no reply"]
    problems = []
    if frame["event"] != "error":
        problems.append(f"{case}: expected an error {sorted(codes)}, got {frame}")
        return problems
    data = frame.get("data")
    if not isinstance(data, dict) or set(data) != {"code", "message"}:
        return [f"{case}: error data must be {{code, message}}: {frame}"]
    if data["code"] not in codes:
        problems.append(f"{case}: expected {sorted(codes)}, got {frame}")
    if not isinstance(data["message"], str) or not data["message"].strip():
        problems.append(f"{case}: error without a message: {frame}")
    if ref is not None and frame.get("ref") != ref:
        problems.append(f"{case}: ref {ref!r} not echoed: {frame}")
    if ref is None and "ref" in frame:
        problems.append(f"{case}: unexpected ref: {frame}")
    return problems


async def answer(
    client: ChatClient, raw: str | bytes, ref: str | None, timeout: float = 5
) -> Frame | None:
    """Send one raw frame and return what answered it: the ack/error with `ref`, or (without a
    ref) the next error that carries no ref. Frames of one socket are answered in order, so
    sending one at a time keeps this unambiguous. None when nothing answered in time."""
    await client.send_raw(raw)
    if ref is None:

        def match(f: Frame) -> bool:
            return f["event"] == "error" and "ref" not in f
    else:

        def match(f: Frame) -> bool:
            return f.get("ref") == ref and f["event"] in ("ack", "error")

    try:
        return await client.wait_for(match, timeout=timeout)
    except TimeoutError:
        return None


def replies_by_ref(client: ChatClient) -> dict[str, list[Frame]]:
    replies: dict[str, list[Frame]] = defaultdict(list)
    for f in client.frames:
        if "ref" in f and f["event"] in ("ack", "error"):
            replies[f["ref"]].append(f)
    return replies


def assert_one_reply_per_ref(client: ChatClient) -> None:
    repeated = {ref: fs for ref, fs in replies_by_ref(client).items() if len(fs) != 1}
    assert not repeated, f"refs answered more than once: {repeated}"


async def joined(connect: Any, username: str, room: str = "main") -> ChatClient:
    client: ChatClient = await connect()
    await client.join(username, room)
    return client


def metric(text: str, sample: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def local_metric(sample: str, **labels: str) -> float:
    """A sample of this process's Prometheus registry (the in-process gateway's)."""
    return REGISTRY.get_sample_value(sample, labels or None) or 0.0


async def until(condition: Any, *, timeout: float, step: float = 0.02) -> None:
    """Poll `condition()` until it is true (cheaper than `wait_for` over thousands of frames)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - a condition over frames, no event to wait on
            await asyncio.sleep(step)


def csp_allows(sources: list[str], url: str) -> bool:
    """Whether CSP source expressions `sources` allow loading `url` from this origin's page."""
    target = urlsplit(url)
    if not target.netloc:
        return "'self'" in sources or "*" in sources
    for source in sources:
        if source == "*" or source == f"{target.scheme}:":
            return True
        if source.startswith("'"):
            continue
        parsed = urlsplit(source if "://" in source else f"{target.scheme}://{source}")
        host = parsed.hostname or ""
        matches_host = host == target.hostname or (
            host.startswith("*.") and (target.hostname or "").endswith(host[1:])
        )
        if matches_host and target.path.startswith(parsed.path or "/"):
            return True
    return False


def script_src(csp: str) -> str | None:
    directives = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = " ".join(words[1:])
    return directives.get("script-src", directives.get("default-src"))


# frame level ----------------------------------------------------------------------------------
async def test_malformed_json_is_bad_json(connect):
    client: ChatClient = await connect()
    failures: list[str] = []
    for raw in [
        "not json",
        "{",
        "}",
        "{'event': 'userJoin'}",
        '{"event":"userJoin",}',
        '{"event":"userJoin","data":{"username":NaN,"room":"main"},"ref":"nan"}',
        '{"event":"userJoin","data":{"username":"alice","room":"main"},"ref":"t"} trailing',
        '{"event":"userJoin"}{"event":"userJoin"}',
        "",
        "   ",
        "\x00",
        "\ufeff{}",
        '{"event": "userJoin", "data": {"username": "alice", "room": "main"',
    ]:
        failures += error_problems(await answer(client, raw, None), "bad_json", None, repr(raw))
    assert not failures, "\n".join(failures)
    await client.join("alice")  # the socket still works


async def test_non_object_frames_are_bad_frame(connect):
    client: ChatClient = await connect()
    failures: list[str] = []
    for raw in [
        "[]",
        '[{"event":"userJoin","data":{"username":"a","room":"main"}}]',
        '"userJoin"',
        '""',
        "42",
        "-1.5e3",
        "null",
        "true",
        "false",
    ]:
        failures += error_problems(await answer(client, raw, None), "bad_frame", None, raw)
    assert not failures, "\n".join(failures)
    await client.join("alice")


async def test_missing_or_non_string_event_is_bad_frame_with_ref(connect):
    client: ChatClient = await connect()
    failures: list[str] = []
    data = {"username": "alice", "room": "main"}
    cases = [json.dumps({"data": data, "ref": "e0"})]
    cases += [
        json.dumps({"event": value, "data": data, "ref": f"e{i}"})
        for i, value in enumerate([None, 42, True, [], ["userJoin"], {}], start=1)
    ]
    for i, raw in enumerate(cases):
        failures += error_problems(await answer(client, raw, f"e{i}"), "bad_frame", f"e{i}", raw)
    assert not failures, "\n".join(failures)
    assert_one_reply_per_ref(client)
    assert client.received("msgHistory") == []


async def test_unknown_event_is_bad_event_with_ref(connect):
    client: ChatClient = await connect()
    failures: list[str] = []
    # Server-to-client events are not client events either.
    names = [
        "hello",
        "",
        "userjoin",
        "USERJOIN",
        "user_join",
        " userJoin",
        "ack",
        "error",
        "msgHistory",
        "activeUsers",
        "__proto__",
        "constructor",
        "x" * 10_000,
        "😀",
    ]
    for i, name in enumerate(names):
        raw = frame_text(name, {"username": "alice", "room": "main"}, f"u{i}")
        failures += error_problems(
            await answer(client, raw, f"u{i}"), "bad_event", f"u{i}", name[:40]
        )
    assert not failures, "\n".join(failures)
    assert_one_reply_per_ref(client)


EVENTS = ["userJoin", "userTyping", "updateChat", "newRoom", "userLeave"]


async def test_missing_or_non_object_data_is_invalid_with_ref(connect):
    client: ChatClient = await joined(connect, "alice")
    failures: list[str] = []
    refs = itertools.count()
    for event in EVENTS:
        variants: list[str] = [
            json.dumps({"event": event, "ref": ref}) for ref in [f"d{next(refs)}"]
        ]
        for value in [None, [], [{"room": "main"}], "main", 42, True]:
            variants.append(frame_text(event, value, f"d{next(refs)}"))
        for raw in variants:
            ref = json.loads(raw)["ref"]
            failures += error_problems(
                await answer(client, raw, ref), "invalid", ref, f"{event}: {raw}"
            )
    assert not failures, "\n".join(failures)
    assert_one_reply_per_ref(client)


# payload fields -------------------------------------------------------------------------------
# A payload that is valid for a client joined to `main` as alice (newRoom's only fault then is
# being about `main`, which is never reached when a field is malformed).
VALID = {
    "userJoin": {"username": "alice", "room": "main"},
    "userTyping": {"username": "alice", "room": "main"},
    "updateChat": {"username": "alice", "body": "hello", "time": 0, "room": "main"},
    "newRoom": {"username2": "bob", "room": "main"},
    "userLeave": {"room": "main"},
}
REQUIRED = {
    "userJoin": ["username", "room"],
    "userTyping": ["username", "room"],
    "updateChat": ["username", "body", "room"],
    "newRoom": ["username2", "room"],
    "userLeave": ["room"],
}
OPTIONAL_STRINGS = {"userJoin": ["session", "since"], "updateChat": ["id"]}
NOT_STRINGS: list[Any] = [42, 4.5, True, False, [], ["alice"], {}, {"name": "alice"}]


async def test_missing_and_mistyped_fields_are_invalid_with_ref(connect, server):
    alice = await joined(connect, "alice")
    bob = await joined(connect, "bob")
    failures: list[str] = []
    refs = itertools.count()

    async def expect_invalid(event: str, data: dict[str, Any], case: str) -> None:
        ref = f"f{next(refs)}"
        reply = await answer(alice, frame_text(event, data, ref), ref)
        failures.extend(error_problems(reply, "invalid", ref, f"{event} {case}: {data}"))

    for event, fields in REQUIRED.items():
        for field in fields:
            data = {k: v for k, v in VALID[event].items() if k != field}
            await expect_invalid(event, data, f"without {field!r}")
            for value in [None, *NOT_STRINGS]:
                await expect_invalid(event, {**VALID[event], field: value}, f"{field}={value!r}")
    for event, fields in OPTIONAL_STRINGS.items():
        for field in fields:
            for value in NOT_STRINGS:
                await expect_invalid(event, {**VALID[event], field: value}, f"{field}={value!r}")
    for value in ["now", "0", [], {}, True]:  # `time` is a number (the server replaces it)
        await expect_invalid(
            "updateChat", {**VALID["updateChat"], "time": value}, f"time={value!r}"
        )

    assert not failures, "\n".join(failures)
    assert_one_reply_per_ref(alice)
    # Nothing of it happened: no message, no typing, no leave, alice still in main.
    await bob.settle()
    for event in ("updateChat", "userTyping", "userLeave", "newRoom"):
        assert bob.received(event) == [], event
    assert await server.messages.newest("main", 10) == []
    await alice.say("main", "still here")
    assert (await bob.event("updateChat", "main"))["data"]["body"] == "still here"


async def test_ref_of_65_characters_or_not_a_string_is_refused_and_not_executed(connect):
    alice = await joined(connect, "alice")
    bob = await joined(connect, "bob")
    ok = "r" * 64
    await alice.send("userTyping", {"username": "alice", "room": "main"}, ok)
    reply = await alice.wait_for(lambda f: f.get("ref") == ok)
    assert reply["event"] == "ack", reply  # 64 characters is allowed and echoed in full
    await bob.event("userTyping", "main")

    failures: list[str] = []
    for bad in ["r" * 65, "x" * 10_000, "", 5, 1.5, True, [], ["a"], {}, {"ref": "a"}]:
        raw = json.dumps(
            {"event": "userTyping", "data": {"username": "alice", "room": "main"}, "ref": bad}
        )
        await alice.send_raw(raw)
        try:
            # The error may echo the bad ref or not; it must not be an ack.
            reply = await alice.wait_for(
                lambda f, b=bad: f["event"] in ("ack", "error") and f.get("ref") in (None, b),
                timeout=5,
            )
        except TimeoutError:
            failures.append(f"ref={bad!r:.40}: no error")
            continue
        if reply["event"] != "error" or reply["data"]["code"] not in ("bad_frame", "invalid"):
            failures.append(f"ref={bad!r:.40}: {reply}")
    assert not failures, "\n".join(failures)
    await bob.settle()
    assert len(bob.received("userTyping")) == 1, "a frame with a bad ref was executed"


# names, bodies, ids ---------------------------------------------------------------------------
BAD_NAME_CHARS = [
    "a b",
    "a.b",
    "a*",
    "*",
    "#a",
    "a#",
    "😀",
    "alice😀",
    "",
    " ",
    " alice",
    "alice ",
    "a\nb",
    "alice\n",
    "a\tb",
    "a/b",
    "a\\b",
    "a\u200bb",
    "a\x00b",
    "<script>",
    "a@b",
    "a:b",
    "a,b",
    "a'b",
    'a"b',
    "a%20b",
    "a+b",
    "...",
]
BAD_USERNAMES = [*BAD_NAME_CHARS, "x" * 33, "é" * 33, "x" * 1000]
BAD_ROOMS = [*BAD_NAME_CHARS, "r" * 65, "é" * 65, "r" * 1000]
GOOD_USERNAMES = ["Zoë", "日本語", "user_1-x", "x" * 32, "é" * 32, "Ωmega", "123", "-_-"]
GOOD_ROOMS = ["r" * 64, "日本", "a-b_c", "Straße", "7"]


async def test_usernames_outside_the_alphabet_or_too_long_are_invalid(connect):
    client: ChatClient = await connect()
    failures: list[str] = []
    for i, name in enumerate(BAD_USERNAMES):
        reply = await answer(
            client, frame_text("userJoin", {"username": name, "room": "main"}, f"n{i}"), f"n{i}"
        )
        failures += error_problems(reply, "invalid", f"n{i}", f"username {name!r:.50}")
    assert not failures, "\n".join(failures)
    assert client.received("msgHistory") == []
    for name in GOOD_USERNAMES:
        other: ChatClient = await connect()
        ack = await other.join(name)
        assert ack["room"] == "main", name


async def test_names_outside_the_alphabet_are_invalid_in_every_event(connect):
    alice = await joined(connect, "alice")
    await alice.join("alice", "side")
    failures: list[str] = []
    refs = itertools.count()

    async def expect_invalid(event: str, data: dict[str, Any], case: str) -> None:
        ref = f"b{next(refs)}"
        reply = await answer(alice, frame_text(event, data, ref), ref)
        failures.extend(error_problems(reply, "invalid", ref, f"{event} {case}"))

    for room in BAD_ROOMS:
        for event in EVENTS:
            await expect_invalid(event, {**VALID[event], "room": room}, f"room={room!r:.50}")
    for name in BAD_USERNAMES:
        await expect_invalid(
            "newRoom", {"username2": name, "room": "side"}, f"username2={name!r:.50}"
        )
        for event in ("userTyping", "updateChat"):
            await expect_invalid(
                event, {**VALID[event], "username": name}, f"username={name!r:.50}"
            )
    assert not failures, "\n".join(failures)
    assert_one_reply_per_ref(alice)
    for room in GOOD_ROOMS:
        assert (await alice.join("alice", room))["room"] == room


async def test_body_empty_after_trim_or_too_long_is_invalid(connect, server):
    alice = await joined(connect, "alice")
    bob = await joined(connect, "bob")
    failures: list[str] = []
    bad = ["", " ", "   \t\n  ", "\u3000\u00a0", "x" * 2001, " " + "x" * 2001 + " ", "é" * 2001]
    for i, body in enumerate(bad):
        data = {"username": "alice", "body": body, "time": 0, "room": "main"}
        reply = await answer(alice, frame_text("updateChat", data, f"y{i}"), f"y{i}")
        failures += error_problems(
            reply, "invalid", f"y{i}", f"body {body!r:.30} ({len(body)} chars)"
        )
    assert not failures, "\n".join(failures)
    longest = await alice.say("main", "  " + "x" * 2000 + "\n ")
    assert longest["body"] == "x" * 2000
    single = await alice.say("main", " é ")
    assert single["body"] == "é"
    got = [(await bob.event("updateChat", "main"))["data"]["body"] for _ in range(2)]
    assert got == ["x" * 2000, "é"]
    await bob.settle()
    assert len(bob.received("updateChat")) == 2
    assert len(await server.messages.newest("main", 10)) == 2


async def test_client_ids_of_bad_shape_are_invalid(connect, server):
    alice = await joined(connect, "alice")
    failures: list[str] = []
    bad = [
        "",
        "short",
        "1234567",
        "x" * 65,
        "has space",
        "dots.in.id",
        "slash/in/id",
        "ünïcödé-id",
        "emoji😀😀😀😀😀",
        "tab\tin-id",
        "new\nline-id",
        "12345678\n",
        "<script>x",
    ]
    for i, cid in enumerate(bad):
        data = {"username": "alice", "body": "hi", "time": 0, "room": "main", "id": cid}
        reply = await answer(alice, frame_text("updateChat", data, f"i{i}"), f"i{i}")
        failures += error_problems(reply, "invalid", f"i{i}", f"id {cid!r}")
    assert not failures, "\n".join(failures)
    assert await server.messages.newest("main", 10) == []
    for cid in ["12345678", "A" * 64, "a_b-C_9-z"]:
        assert (await alice.say("main", "ok", id=cid))["id"] == cid


# transport ------------------------------------------------------------------------------------
async def test_binary_frame_is_bad_frame_and_the_socket_stays_open(connect):
    client: ChatClient = await connect()
    failures: list[str] = []
    join = frame_text("userJoin", {"username": "alice", "room": "main"}, "bin").encode()
    for raw in [b"\x00\xff\x10", b"", join, b"\xff" * 5000]:
        failures += error_problems(
            await answer(client, raw, None), "bad_frame", None, repr(raw[:20])
        )
    assert not failures, "\n".join(failures)
    assert client.received("msgHistory") == [], "a binary frame was executed"
    assert not client.closed.done()
    ack = await client.join("alice")
    assert ack["room"] == "main"


def padded_join(size: int, username: str, fill: str = " ") -> str:
    """A valid userJoin frame of exactly `size` UTF-8 bytes (white space pads it, or `fill`)."""
    head = json.dumps({"event": "userJoin", "data": {"username": username, "room": "main"}})
    if fill == " ":
        text = head[:-1] + " " * (size - len(head.encode())) + "}"
    else:
        prefix = head[:-1] + ', "pad": "'
        room = size - len(prefix.encode()) - len('"}')
        count, rest = divmod(room, len(fill.encode()))
        text = prefix + fill * count + "x" * rest + '"}'
    assert len(text.encode()) == size
    return text


async def test_a_frame_of_exactly_the_limit_is_accepted(connect):
    client: ChatClient = await connect()
    await client.send_raw(padded_join(MAX_FRAME, "alice"))
    await client.users("main", ["alice"])
    assert not client.closed.done()


def close_received(client: ChatClient) -> int | None:
    """The code of the close frame the server sent, as soon as it arrived (the `closed` future
    resolves only once the closing handshake is over and the TCP connection is gone)."""
    close = client.ws.protocol.close_rcvd
    return None if close is None else close.code


def abort(client: ChatClient) -> None:
    """Drop the TCP connection of a client stuck in the closing handshake, so that the fixture's
    `close()` does not wait for the websockets close timeout (10 s) at teardown."""
    client.ws.transport.abort()


async def closed_by_server(client: ChatClient, *, timeout: float = 5) -> int | None:
    """Wait (bounded) until the connection is closed; its close code. On a timeout, say what the
    client saw: a close frame that never turned into a closed connection is a server bug."""
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(client.closed)
    except TimeoutError:
        abort(client)
        raise AssertionError(
            f"the connection is still open after {timeout:g}s: close frame received: "
            f"{close_received(client)}, sent: {client.ws.protocol.close_sent}, "
            f"last frames: {client.frames[-3:]}"
        ) from None


@pytest.mark.parametrize("how", ["one frame", "fragmented", "multi-byte characters"])
async def test_a_text_frame_over_the_limit_closes_1009_and_others_are_unaffected(connect, how):
    alice = await joined(connect, "alice")
    bob = await joined(connect, "bob")
    mallory = await joined(connect, "mallory")
    with contextlib.suppress(websockets.ConnectionClosed):  # the server may close mid-send
        if how == "one frame":
            await mallory.send_raw(padded_join(MAX_FRAME + 1, "mallory"))
        elif how == "fragmented":
            text = padded_join(MAX_FRAME + 4096, "mallory")
            await mallory.ws.send(text[i : i + 4096] for i in range(0, len(text), 4096))
        else:
            # 64 KiB is bytes: ~22,000 three-byte characters are 66,000 bytes on the wire.
            text = padded_join(MAX_FRAME + 500, "mallory", fill="€")
            assert len(text) < MAX_FRAME < len(text.encode())
            await mallory.send_raw(text)
    code = await closed_by_server(mallory)
    assert code == 1009, f"closed with {code}; frames seen: {mallory.frames[-3:]}"
    left = await alice.event("userLeave", "main")
    assert left["data"]["username"] == "mallory"
    await alice.users("main", ["alice", "bob"])
    await alice.say("main", "after")
    assert (await bob.event("updateChat", "main"))["data"]["body"] == "after"
    await bob.say("main", "back")
    assert (await alice.event("updateChat", "main"))["data"]["body"] == "back"


# HTTP -----------------------------------------------------------------------------------------
async def test_http_bad_parameters_and_room_names_answer_400_json(connect, server):
    alice = await joined(connect, "alice")
    message = await alice.say("main", "one")
    failures: list[str] = []
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        bad = [
            "/api/rooms/main/messages?limit=0",
            "/api/rooms/main/messages?limit=201",
            "/api/rooms/main/messages?limit=abc",
            "/api/rooms/main/messages?limit=-1",
            "/api/rooms/main/messages?limit=1.5",
            "/api/rooms/main/messages?limit=",
            "/api/rooms/main/messages?limit=99999999999999999999999",
            "/api/rooms/main/messages?before=" + "x" * 200,
            "/api/rooms/main/messages?before=" + "x" * 10_000,
            "/api/rooms/main/messages?before=no-such-message-id",
            "/api/rooms/a.b/messages",
            "/api/rooms/a%20b/messages",
            "/api/rooms/%2A/messages",
            "/api/rooms/%23room/messages",
            "/api/rooms/%F0%9F%98%80/messages",
            "/api/rooms/" + "r" * 65 + "/messages",
            "/api/rooms/a.b/users",
            "/api/rooms/%2A/users",
            "/api/rooms/" + "r" * 65 + "/users",
        ]
        for path in bad:
            response = await http.get(path)
            case = f"GET {path[:70]}"
            if response.status_code != 400:
                failures.append(f"{case}: {response.status_code} {response.text[:200]}")
                continue
            try:
                body = response.json()
            except ValueError:
                failures.append(f"{case}: body is not JSON: {response.text[:200]}")
                continue
            if set(body) != {"code", "message"} or body["code"] not in ERROR_CODES:
                failures.append(f"{case}: body {body}")
            elif not body["message"]:
                failures.append(f"{case}: empty message")
        # The same routes answer well-formed requests.
        for path in [
            "/api/rooms/main/messages?limit=1",
            "/api/rooms/main/messages?limit=200",
            f"/api/rooms/main/messages?before={message['id']}",
            "/api/rooms/日本/messages",
            "/api/rooms/" + "r" * 64 + "/messages",
            "/api/rooms/main/users",
        ]:
            response = await http.get(path)
            if response.status_code != 200:
                failures.append(
                    f"GET {path[:70]} (valid): {response.status_code} {response.text[:200]}"
                )
    assert not failures, "\n".join(failures)


async def test_http_unknown_before_is_400(connect, server):
    alice = await joined(connect, "alice")
    await alice.say("main", "one")
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        response = await http.get("/api/rooms/main/messages", params={"before": "not-an-id-0001"})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid"


# floods ---------------------------------------------------------------------------------------
def flood_kinds(name: str, room: str) -> list[Any]:
    """Kinds of bad frames: each makes, from a counter and a ref, (frame, ref or None when the
    server cannot read it, the accepted answers: "ack" for an updateChat the limit lets by)."""

    def chat(body: Any, in_room: str, r: str) -> str:
        return frame_text(
            "updateChat", {"username": name, "body": body, "time": 0, "room": in_room}, r
        )

    return [
        lambda i, r: ("{not json" + str(i), None, {"bad_json"}),
        lambda i, r: (b"\x00binary" + str(i).encode(), None, {"bad_frame"}),
        lambda i, r: ("[1, 2, 3]", None, {"bad_frame"}),
        lambda i, r: (
            frame_text("userTyping", {"username": name, "room": room}, "x" * 65),
            None,
            {"bad_frame"},
        ),
        lambda i, r: (json.dumps({"data": {}, "ref": r}), r, {"bad_frame"}),
        lambda i, r: (frame_text(f"nope{i}", {}, r), r, {"bad_event"}),
        lambda i, r: (frame_text("userJoin", [], r), r, {"invalid"}),
        lambda i, r: (frame_text("userJoin", {"username": i, "room": room}, r), r, {"invalid"}),
        lambda i, r: (chat(["x"], room, r), r, {"invalid"}),
        lambda i, r: (chat("", room, r), r, {"invalid"}),
        lambda i, r: (
            frame_text("userJoin", {"username": "f" * 200, "room": room}, r),
            r,
            {"invalid"},
        ),
        lambda i, r: (
            frame_text("userJoin", {"username": name, "room": "r" * 500}, r),
            r,
            {"invalid"},
        ),
        lambda i, r: (frame_text("newRoom", {"username2": "a b", "room": room}, r), r, {"invalid"}),
        lambda i, r: (
            frame_text("userTyping", {"username": name, "room": "main"}, r),
            r,
            {"not_joined"},
        ),
        lambda i, r: (chat("x", "main", r), r, {"not_joined"}),
        lambda i, r: (
            frame_text("userJoin", {"username": "alice", "room": room}, r),
            r,
            {"username_mismatch"},
        ),
        lambda i, r: (chat(f"spam {i}", room, r), r, {"ack", "rate_limited"}),
    ]


def reply_problems(
    client: ChatClient, sent: list[tuple[str | None, set[str]]], *, all_answered: bool
) -> list[str]:
    """Every ref answered at most once (exactly once when `all_answered`) with an accepted code."""
    replies = replies_by_ref(client)
    problems = []
    for ref, codes in sent:
        if ref is None:
            continue
        got = replies.get(ref, [])
        if len(got) > 1 or (not got and all_answered):
            problems.append(f"{ref}: {len(got)} replies {got}")
            continue
        for reply in got:
            code = "ack" if reply["event"] == "ack" else reply["data"]["code"]
            if code not in codes:
                problems.append(f"{ref}: expected {sorted(codes)}, got {reply}")
    return problems


FLOOD = 3000


async def test_a_flood_of_bad_frames_affects_nobody_else(connect, server):
    """Two well-behaved clients chat in main while two others flood the gateway with bad frames:
    one sends as fast as it can (its own errors may pile up beyond its send queue: it is then
    closed with 1013), the other keeps at most 200 frames unanswered (it must stay open, and
    gets exactly one answer for every frame)."""
    alice = await joined(connect, "alice")
    bob = await joined(connect, "bob")
    blaster: ChatClient = await connect()
    await blaster.join("blaster", "flood1")
    steady: ChatClient = await connect()
    await steady.join("steady", "flood2")
    blasted: list[tuple[str | None, set[str]]] = []
    steadied: list[tuple[str | None, set[str]]] = []
    chatted: dict[str, list[str]] = {"alice": [], "bob": []}

    def answered(client: ChatClient, ref: str) -> bool:
        return any(f.get("ref") == ref for f in reversed(client.frames))

    async def blast() -> None:
        kinds = flood_kinds("blaster", "flood1")
        with contextlib.suppress(websockets.ConnectionClosed):
            for i in range(FLOOD):
                raw, ref, codes = kinds[i % len(kinds)](i, f"b{i}")
                await blaster.send_raw(raw)
                blasted.append((ref, codes))
            await blaster.send("userTyping", {"username": "blaster", "room": "flood1"}, "end")

    async def steady_flood() -> None:
        kinds = flood_kinds("steady", "flood2")
        last: str | None = None
        for i in range(FLOOD):
            raw, ref, codes = kinds[i % len(kinds)](i, f"s{i}")
            await steady.send_raw(raw)
            steadied.append((ref, codes))
            last = ref or last
            if i % 200 == 199 and last is not None:
                # Frames of one socket are answered in order.
                await until(lambda r=last: answered(steady, r), timeout=20)
        await steady.send("userTyping", {"username": "steady", "room": "flood2"}, "end")

    async def chat(client: ChatClient, name: str) -> None:
        for n in range(10):
            await client.say("main", f"{name} during {n}", id=f"{name}-during-{n:04d}")
            chatted[name].append(f"{name} during {n}")
            await asyncio.sleep(0.01)

    await asyncio.gather(blast(), steady_flood(), chat(alice, "alice"), chat(bob, "bob"))
    await until(
        lambda: (
            answered(steady, "end")
            and (answered(blaster, "end") or close_received(blaster) is not None)
        ),
        timeout=30,
    )

    # The steady flooder: open, one answer per ref, one error per frame without a ref.
    assert close_received(steady) is None and not steady.closed.done()
    problems = reply_problems(steady, steadied, all_answered=True)
    assert not problems, f"{len(problems)} wrong answers, e.g.:\n" + "\n".join(problems[:20])
    unreffed = [f for f in steady.frames if f["event"] == "error" and "ref" not in f]
    assert len(unreffed) == sum(1 for ref, _ in steadied if ref is None)
    assert all(f["data"]["code"] in ("bad_json", "bad_frame") for f in unreffed)
    codes = Counter(f["data"]["code"] for f in steady.frames if f["event"] == "error")
    assert codes["rate_limited"] > 0, codes
    assert codes["internal"] == 0 and codes["unavailable"] == 0, codes

    # The blaster: open, or closed with 1013; never two answers for one ref, never a wrong one.
    blaster_closed = close_received(blaster)
    assert blaster_closed in (None, 1013), f"the blaster was closed with {blaster_closed}"
    problems = reply_problems(blaster, blasted, all_answered=blaster_closed is None)
    if blaster_closed is not None:
        # The gateway does not finish that closing handshake (see the next test): don't wait.
        abort(blaster)
    assert not problems, f"{len(problems)} wrong answers, e.g.:\n" + "\n".join(problems[:20])

    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200

    # The good clients: everything sent during the flood, and after it, both ways, once each.
    for name, peer in (("alice", bob), ("bob", alice)):
        await peer.wait_for(
            lambda f, n=name: f["event"] == "updateChat" and f["data"]["id"] == f"{n}-during-0009"
        )
    await alice.say("main", "alice after", id="alice-after-0001")
    await bob.say("main", "bob after", id="bob-after-0001")
    await bob.wait_for(
        lambda f: f["event"] == "updateChat" and f["data"]["id"] == "alice-after-0001"
    )
    await alice.wait_for(
        lambda f: f["event"] == "updateChat" and f["data"]["id"] == "bob-after-0001"
    )
    await alice.settle()
    for name, peer in (("alice", bob), ("bob", alice)):
        bodies = [f["data"]["body"] for f in peer.received("updateChat", "main")]
        assert bodies == [*chatted[name], f"{name} after"], f"{peer.username} got {bodies}"
    for client in (alice, bob):
        assert not client.closed.done() and close_received(client) is None
        assert not any(f["event"] == "error" for f in client.frames), client.frames
        assert [f["event"] for f in client.frames if f["event"] not in GOOD_EVENTS] == []
        assert {f["data"]["username"] for f in client.received("updateChat")} <= {"alice", "bob"}


GOOD_EVENTS = {"msgHistory", "activeUsers", "userJoin", "userLeave", "updateChat", "ack"}


async def test_a_socket_closed_by_the_server_is_released_while_its_client_keeps_sending(
    connect, server
):
    """When the gateway closes a socket (here 1009, for a frame over the limit) while the client
    has already sent more frames behind it, the connection must still end: the server has to
    read past those frames to the client's close and complete the closing handshake."""
    client: ChatClient = await connect()
    other = await joined(connect, "other")
    with contextlib.suppress(websockets.ConnectionClosed):
        await client.send_raw("x" * (server.settings.max_frame_bytes + 1))
        for i in range(200):
            await client.send_raw("{not json" + str(i))
    assert await closed_by_server(client) == 1009
    await other.say("main", "fine")


class RawWebSocket:
    """A WebSocket client written by hand on a plain TCP socket, to be a really slow consumer.

    A `websockets` client keeps reading into its own buffer in the background, and the kernel
    grows a receive buffer to megabytes, so such a client never makes the server wait. This one
    sets a tiny SO_RCVBUF before connecting (which also stops the kernel from growing it) and
    reads nothing after the handshake until the test says so. The server's writes then fill
    its send buffers and block, its per-socket queue fills, and it must close the socket (1013).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    async def connect(cls, url: str, *, rcvbuf: int = 4096) -> RawWebSocket:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            async with asyncio.timeout(10):
                await loop.sock_connect(sock, (parts.hostname, parts.port))
                key = base64.b64encode(os.urandom(16)).decode()
                request = (
                    f"GET /ws HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                await loop.sock_sendall(sock, request.encode())
                raw = cls(sock)
                while b"\r\n\r\n" not in raw.buffer:
                    chunk = await loop.sock_recv(sock, 4096)
                    assert chunk, "the server closed during the handshake"
                    raw.buffer += chunk
        except BaseException:
            sock.close()
            raise
        head, raw.buffer = raw.buffer.split(b"\r\n\r\n", 1)
        assert head.split(b"\r\n")[0].split()[1] == b"101", head
        return raw

    async def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes([0x81, 0x80 | n])
        elif n < 65536:
            head = bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
        else:
            head = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, head + mask + masked)

    def frames(self) -> list[tuple[int, bytes]]:
        """The complete frames in the buffer (opcode, payload), consumed from it."""
        out: list[tuple[int, bytes]] = []
        data, i = self.buffer, 0
        while len(data) - i >= 2:
            opcode, n, j = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
            if n == 126:
                if len(data) - j < 2:
                    break
                n, j = struct.unpack("!H", data[j : j + 2])[0], j + 2
            elif n == 127:
                if len(data) - j < 8:
                    break
                n, j = struct.unpack("!Q", data[j : j + 8])[0], j + 8
            if len(data) - j < n:
                break
            out.append((opcode, data[j : j + n]))
            i = j + n
        self.buffer = data[i:]
        return out

    async def read_until(self, done: Any, *, timeout: float) -> list[tuple[int, bytes]]:
        """Read (and parse) until `done(frames)` or the end of the stream."""
        loop = asyncio.get_running_loop()
        seen: list[tuple[int, bytes]] = []
        async with asyncio.timeout(timeout):
            while not done(seen):
                chunk = await loop.sock_recv(self.sock, 1 << 16)
                if not chunk:
                    break
                self.buffer += chunk
                seen += self.frames()
        return seen

    def close(self) -> None:
        self.sock.close()


@pytest.mark.settings(send_queue_bytes=64 * 1024, rate_burst=10_000, rate_per_second=10_000)
async def test_a_consumer_that_does_not_read_is_closed_1013_and_the_sender_is_unaffected(
    connect, server
):
    # The rate limit is raised far above the flood so that every message of it is accepted:
    # the test is about the slow reader, not the sender's limit (send_queue_bytes=64 KiB is the
    # minimum Settings allows).
    sender = await joined(connect, "sender")
    watcher = await joined(connect, "watcher")
    slow = await RawWebSocket.connect(server.url)
    try:
        await slow.send_text(frame_text("userJoin", {"username": "slow", "room": "main"}, "j"))
        joined_frames = await slow.read_until(
            lambda fs: any(op == 1 and json.loads(p).get("ref") == "j" for op, p in fs), timeout=10
        )
        ack = next(json.loads(p) for op, p in joined_frames if op == 1 and b'"ref":"j"' in p)
        assert ack["event"] == "ack", ack
        await watcher.users("main", ["sender", "slow", "watcher"])

        # Big frames (2,000 four-byte characters, ~8 KB each) fill the socket buffers quickly;
        # flood until the gateway gives up on the slow socket, with a bound.
        before = local_metric("roomcast_gateway_slow_consumer_closes_total")
        body = "😀" * 2000
        sent = 0
        while local_metric("roomcast_gateway_slow_consumer_closes_total") == before:
            assert sent < 4000, "the slow consumer was never closed"
            refs = [f"s{sent + k}" for k in range(50)]
            for ref in refs:
                await sender.send(
                    "updateChat",
                    {
                        "username": "sender",
                        "body": body,
                        "time": 0,
                        "room": "main",
                        "id": f"slow-test-{ref}",
                    },
                    ref,
                )
            sent += len(refs)
            last = refs[-1]
            await until(
                lambda r=last: any(f.get("ref") == r for f in reversed(sender.frames)), timeout=20
            )

        # The sender got exactly one ack for every message, in order.
        replies = replies_by_ref(sender)
        acks = [replies.get(f"s{k}", []) for k in range(sent)]
        assert all(len(r) == 1 and r[0]["event"] == "ack" for r in acks), [
            r for r in acks if len(r) != 1 or r[0]["event"] != "ack"
        ][:5]
        # The watcher, reading normally, got every message once, in order.
        await watcher.wait_for(
            lambda f: f["event"] == "updateChat" and f["data"]["id"] == f"slow-test-s{sent - 1}",
            timeout=20,
        )
        ids = [f["data"]["id"] for f in watcher.received("updateChat", "main")]
        assert ids == [f"slow-test-s{k}" for k in range(sent)]
        left = await watcher.event("userLeave", "main")
        assert left["data"]["username"] == "slow"

        # Now read what the slow socket was sent: it ends with a close frame, code 1013.
        frames = await slow.read_until(lambda fs: any(op == 8 for op, _ in fs), timeout=30)
        closes = [payload for op, payload in frames if op == 8]
        assert closes, f"no close frame after {len(frames)} frames"
        assert struct.unpack("!H", closes[0][:2])[0] == 1013
        assert not sender.closed.done() and not watcher.closed.done()
    finally:
        slow.close()
    await watcher.say("main", "still fine")
    assert (await sender.event("updateChat", "main"))["data"]["body"] == "still fine"


# compression ----------------------------------------------------------------------------------
async def test_compression_offer_is_declined_by_default(connect):
    client: ChatClient = await connect()  # websockets offers permessage-deflate by default
    assert client.ws.response is not None
    assert client.ws.response.headers.get("Sec-WebSocket-Extensions") is None
    await client.join("alice")


@pytest.mark.settings(websocket_compression=True)
async def test_compression_is_negotiated_when_enabled(connect):
    client: ChatClient = await connect()
    bob: ChatClient = await connect(compression=None)
    assert client.ws.response is not None and bob.ws.response is not None
    extensions = client.ws.response.headers.get("Sec-WebSocket-Extensions")
    assert extensions is not None and "permessage-deflate" in extensions
    assert bob.ws.response.headers.get("Sec-WebSocket-Extensions") is None
    await client.join("alice")
    await bob.join("bob")
    await client.say("main", "compressible " * 100)
    assert (await bob.event("updateChat", "main"))["data"]["body"] == (
        "compressible " * 100
    ).strip()


# operations -----------------------------------------------------------------------------------
async def test_health_and_readiness(server):
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
    assert health.status_code == 200
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert isinstance(checks, dict) and checks and all(v is True for v in checks.values()), checks


async def test_metrics_count_connections_frames_errors_and_fanout(connect, server):
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        before = (await http.get("/metrics")).text
        alice = await joined(connect, "alice")
        bob = await joined(connect, "bob")
        await alice.send_raw("this is not json")
        await alice.wait_for(lambda f: f["event"] == "error" and f["data"]["code"] == "bad_json")
        await alice.say("main", "hi")
        await bob.event("updateChat", "main")
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "roomcast_gateway_connections",
        "roomcast_gateway_frames_in_total",
        "roomcast_gateway_errors_total",
        "roomcast_gateway_fanout_seconds",
    ):
        assert re.search(rf"^{name}[{{_ ]", text, re.M), f"{name} missing from /metrics"
    assert (metric(text, "roomcast_gateway_connections") or 0) >= 2
    bad_json_before = metric(before, "roomcast_gateway_errors_total", code="bad_json") or 0
    assert metric(text, "roomcast_gateway_errors_total", code="bad_json") == bad_json_before + 1
    frames_in = metric(text, "roomcast_gateway_frames_in_total", event="userJoin") or 0
    assert (
        frames_in >= (metric(before, "roomcast_gateway_frames_in_total", event="userJoin") or 0) + 2
    )
    assert (metric(text, "roomcast_gateway_fanout_seconds_count") or 0) >= 1


async def test_openapi_lists_the_api_and_docs_answer(server):
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        spec = await http.get("/openapi.json")
        docs = await http.get("/docs")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert "/api/rooms/{room}/messages" in paths and "/api/rooms/{room}/users" in paths, list(paths)
    assert "get" in paths["/api/rooms/{room}/messages"]
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")


async def test_docs_page_can_load_its_scripts_under_its_own_csp(server):
    """/docs is only documentation if a browser runs it: every script it loads from elsewhere
    must be allowed by the Content-Security-Policy the page is served with."""
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        docs = await http.get("/docs")
    assert docs.status_code == 200
    policy = script_src(docs.headers.get("Content-Security-Policy", "")) or "*"
    sources = re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", docs.text)
    blocked = [src for src in sources if not csp_allows(policy.split(), src)]
    assert not blocked, f"CSP script-src {policy!r} blocks {blocked}"


async def test_web_client_is_served_with_a_csp_without_unsafe_inline_scripts(server):
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        page = await http.get("/")
        # Hypercorn answers one request of a keep-alive connection at a time: this second one
        # proves that the handler of "/" has finished and closed index.html. Without it, the
        # fixture stopping the server right away can race that close (an unclosed-file
        # ResourceWarning in about one run out of twenty).
        assert (await http.get("/healthz")).status_code == 200
    assert page.status_code == 200
    csp = page.headers.get("Content-Security-Policy")
    assert csp, "no Content-Security-Policy header on /"
    scripts = script_src(csp)
    assert scripts is not None, f"no script-src or default-src in {csp!r}"
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts, csp
    # A policy repeated in a <meta> of the page must not loosen it either.
    pattern = r"http-equiv=[\"']Content-Security-Policy[\"'][^>]*?content=([\"'])(.*?)\1"
    for _, meta in re.findall(pattern, page.text, re.I | re.S):
        meta_scripts = script_src(meta) or ""
        assert "'unsafe-inline'" not in meta_scripts, meta


async def test_server_answers_after_every_kind_of_garbage_on_one_socket(connect, server):
    """A short end-to-end sanity check mixing everything on one socket, then a clean close."""
    client: ChatClient = await connect()
    garbage: list[str | bytes] = [
        "{",
        b"\x01",
        "[]",
        '{"event":1}',
        '{"event":"x","data":{}}',
        '{"event":"userJoin","data":5}',
        str(uuid.uuid4()),
    ]
    for raw in garbage:
        await client.send_raw(raw)
    await client.join("alice")
    errors = Counter(f["data"]["code"] for f in client.frames if f["event"] == "error")
    assert errors == {"bad_json": 2, "bad_frame": 3, "bad_event": 1, "invalid": 1}, errors
    await client.close()
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200

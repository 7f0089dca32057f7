"""The HTTP API fuzzed from its own OpenAPI document (schemathesis over Hypothesis).

Against the in-process server: no request answers 5xx, every error is a JSON `{"code",
"message"}` with a documented code, and every response conforms to the document (status code,
content type, body schema). The document itself must be valid enough to drive this: each
operation documents its responses. A second property fuzzes the one thing the API guards, a
private room: no `Authorization` value but a member's session opens it.

Hypothesis runs in a worker thread (its tests are synchronous; the server lives on the test's
event loop), with fixed seeds and a bounded number of examples.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import checks

from tests.support.chat_client import ChatClient
from tests.support.inprocess import Server

#: PROTOCOL.md's error codes (v1, 2.3, 2.4).
DOCUMENTED_CODES = {
    "bad_json",
    "bad_frame",
    "bad_event",
    "invalid",
    "not_joined",
    "username_taken",
    "username_mismatch",
    "user_offline",
    "room_exists",
    "room_private",
    "rate_limited",
    "unavailable",
    "internal",
    "not_found",
    "forbidden",
    "unauthorized",
    "muted",
    "banned",
}
#: Whether responses match the document. Left out: schemathesis's checks that valid-looking
#: input is accepted and invalid input refused, which judge how precise the parameter schemas
#: are (a room is documented as any string), not how the server behaves.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
FUZZ = settings(
    max_examples=30,  # per operation: the document now has ~20 of them
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def error_problem(status: int, body: Any) -> str | None:
    """What is wrong with an HTTP error's body, or None."""
    if not isinstance(body, dict) or set(body) != {"code", "message"}:
        return f"{status}: body {body!r} is not {{'code', 'message'}}"
    if body["code"] not in DOCUMENTED_CODES or not isinstance(body["message"], str):
        return f"{status}: code {body['code']!r} is not documented"
    return None


def _operation_test(
    base: str,
    operation: schemathesis.APIOperation,
    mode: schemathesis.GenerationMode,
    statuses: dict[int, int],
) -> Any:
    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base, timeout=10)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 400:
            problem = error_problem(response.status_code, response.json())
            assert problem is None, f"{case.as_curl_command()}: {problem}"
        case.validate_response(response, checks=CHECKS)

    return run


def fuzz_operations(base: str) -> dict[str, dict[int, int]]:
    """Every operation in both generation modes; the status codes each answered."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    seen: dict[str, dict[int, int]] = {}
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path == "/":
                # the web client's page: its send_file leaves index.html open when the client
                # is `requests` (a ResourceWarning, reported); /docs and the API are what matter
                continue
            label = f"{mode.value} {operation.label}"
            run = _operation_test(base, operation, mode, seen.setdefault(label, {}))
            try:
                run()
            except Unsatisfiable:
                # no parameter of this operation can be made invalid (negative mode)
                assert mode is schemathesis.GenerationMode.NEGATIVE, label
                del seen[label]
    return seen


async def test_http_api_answers_as_its_openapi_document_says(server: Server) -> None:
    seen = await asyncio.to_thread(fuzz_operations, server.http)
    assert "positive GET /api/rooms/{room}/messages" in seen, seen
    assert "negative GET /api/rooms/{room}/messages" in seen, seen
    # the fuzzing reached both the answers and the refusals of the API
    messages = seen["positive GET /api/rooms/{room}/messages"]
    assert 200 in messages and 400 in messages, seen


async def test_every_operation_documents_its_responses(server: Server) -> None:
    """OpenAPI requires at least one response per operation; quart-schema leaves the pages,
    /metrics and the ops routes with none (docs.py fills them in)."""
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        document = (await http.get("/openapi.json")).json()
    empty = [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if not operation.get("responses")
    ]
    assert empty == [], empty
    assert {"/healthz", "/readyz", "/metrics"} <= set(document["paths"])
    assert "/docs" not in document["paths"]


# -- a private room under hostile Authorization headers ---------------------------------------

ROOM = "fuzzdm"


def authorization(sessions: dict[str, str]) -> st.SearchStrategy[str | None]:
    alice, bob, eve = sessions["alice"], sessions["bob"], sessions["eve"]
    mangled = st.builds(
        lambda s, i, c: s[:i] + c + s[i + 1 :],
        st.sampled_from([alice, bob]),
        st.integers(0, len(alice) - 1),
        st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    )
    session = st.one_of(
        st.sampled_from([alice, bob, eve, "", " ", alice + "x", alice[:-1], alice.upper()]),
        mangled,
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
    )
    prefix = st.sampled_from(["Bearer ", "bearer ", "Bearer  ", "Basic ", "", "Bearer\t"])
    # what HTTP lets a client send: visible ASCII, no white space at either end
    return st.none() | st.builds(lambda p, s: (p + s).strip(), prefix, session).filter(bool)


def fuzz_private_room(base: str, sessions: dict[str, str]) -> dict[str, int]:
    members = {sessions["alice"], sessions["bob"]}
    outcomes: dict[str, int] = {}
    path = st.sampled_from(
        [
            f"/api/rooms/{ROOM}/messages",
            f"/api/rooms/{ROOM}/users",
            f"/api/rooms/{ROOM}/messages?limit=1",
        ]
    )

    @FUZZ
    @given(header=authorization(sessions), url=path)
    def run(header: str | None, url: str) -> None:
        headers = {} if header is None else {"Authorization": header}
        response = httpx.get(base + url, headers=headers, timeout=10)
        # "Bearer" 1*SP token (RFC 6750): spaces after the scheme do not change the credential
        member = (
            header is not None
            and header.startswith("Bearer ")
            and header.removeprefix("Bearer ").strip() in members
        )
        kind = "member" if member else "stranger"
        outcomes[f"{kind} {response.status_code}"] = (
            outcomes.get(f"{kind} {response.status_code}", 0) + 1
        )
        if response.status_code >= 400:
            problem = error_problem(response.status_code, response.json())
            assert problem is None, f"{header!r} {url}: {problem}"
        if not member:
            assert response.status_code == 403, (header, url, response.status_code, response.text)
            assert response.json()["code"] == "room_private"
        else:
            assert response.status_code == 200, (header, url, response.text)

    run()
    return outcomes


async def test_private_room_opens_only_to_its_members_sessions(
    server: Server, connect: Any
) -> None:
    alice: ChatClient = await connect()
    bob: ChatClient = await connect()
    eve: ChatClient = await connect()
    await alice.join("alice", ROOM)
    await bob.join("bob", "main")
    await eve.join("eve", "main")
    await alice.request("newRoom", {"username2": "bob", "room": ROOM})
    await alice.say(ROOM, "for bob only")
    sessions = {"alice": alice.session or "", "bob": bob.session or "", "eve": eve.session or ""}
    outcomes = await asyncio.to_thread(fuzz_private_room, server.http, sessions)
    assert outcomes.get("member 200") and outcomes.get("stranger 403"), outcomes


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/rooms/main/messages"), ("GET", "/api/nothing"), ("DELETE", "/healthz")],
)
async def test_requests_outside_the_document_get_json_errors(
    server: Server, method: str, path: str
) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        response = await http.request(method, path)
    assert 400 <= response.status_code < 500, response.status_code
    assert error_problem(response.status_code, response.json()) is None

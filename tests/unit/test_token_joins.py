"""Sign-in by token over real WebSockets (PROTOCOL.md 2.4): joins by token, the name and rooms
claims, ROOMCAST_AUTH=token, names held by a subject, refresh, and the 4001 close at expiry."""

from __future__ import annotations

import asyncio
import time
from dataclasses import fields
from typing import Any, NamedTuple

import httpx
import jwt
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from roomcast.gateway.auth.signin import CLOSE_UNAUTHORIZED
from roomcast.gateway.connection import Connection, Limiters
from roomcast.gateway.ratelimit import TokenBucket
from roomcast.presence.reservations import SUBJECT_HOLD_SECONDS, NameReservations
from roomcast.presence.reservations import refusal as refusal_text
from roomcast.shared.auth import Identity, subject_key
from roomcast.shared.names import username_key
from roomcast.shared.store.memory import InMemoryRoomStore
from tests.support.chat_client import ChatClient, RefusedError
from tests.support.inprocess import running
from tests.support.tokens import JWT_SECRET, SigningKey, claims, hs256, jwks_server

pytestmark = [pytest.mark.unit, pytest.mark.settings(jwt_secret=JWT_SECRET)]


async def sign_in(client: ChatClient, token: str, room: str = "main", **extra: Any) -> Any:
    ack = await client.request("userJoin", {"token": token, "room": room, **extra})
    client.username = ack["username"]
    return ack


class Refused(NamedTuple):
    code: str
    message: str


async def refusal(client: ChatClient, event: str, data: dict[str, Any]) -> Refused:
    with pytest.raises(RefusedError) as err:
        await client.request(event, data)
    return Refused(err.value.code, err.value.frame["data"]["message"])


def sign_ins(outcome: str) -> float:
    return REGISTRY.get_sample_value("roomcast_gateway_sign_ins_total", {"outcome": outcome}) or 0


def logged(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


async def test_join_by_token_signs_in_under_the_name_claim(connect):
    bob = await connect()
    await bob.join("bob")
    alice = await connect()
    ack = await sign_in(alice, hs256(sub="u-alice", name="alice"))
    assert ack["username"] == "alice" and ack["room"] == "main"
    assert "session" not in ack  # a signed-in user proves itself with tokens
    assert (await bob.event("userJoin", "main"))["data"]["username"] == "alice"
    await alice.say("main", "hi")
    assert (await bob.event("updateChat", "main"))["data"]["username"] == "alice"
    # later joins of the connection need no token again
    assert (await alice.request("userJoin", {"room": "team"}))["username"] == "alice"


async def test_without_a_name_claim_the_subject_is_the_username(connect):
    client = await connect()
    assert (await sign_in(client, hs256(sub="carol")))["username"] == "carol"


async def test_username_beside_a_token_must_be_the_tokens(connect):
    client = await connect()
    error = await refusal(
        client, "userJoin", {"token": hs256(name="alice"), "username": "mallory", "room": "main"}
    )
    assert error.code == "username_mismatch" and "'alice'" in error.message
    assert (await sign_in(client, hs256(name="alice"), username="alice"))["username"] == "alice"


async def test_token_and_session_together_or_neither_name_nor_token_are_invalid(connect):
    client = await connect()
    error = await refusal(
        client, "userJoin", {"token": hs256(), "session": "v1.x.y.z", "room": "main"}
    )
    assert error.code == "invalid" and "not both" in error.message
    error = await refusal(client, "userJoin", {"room": "main"})
    assert error.code == "invalid" and "'token'" in error.message


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: hs256(ttl=-10), "the token expired; get a new one"),
        (lambda: hs256("a-secret-that-is-not-the-servers-one"), "signature does not verify"),
        (lambda: "garbage", "not a well-formed JWT"),
        (lambda: hs256(name="no spaces"), "'name' claim"),
    ],
)
async def test_bad_tokens_are_unauthorized_and_logged_without_the_token(connect, token, reason):
    client = await connect()
    text = token()
    before = sign_ins("refused")
    with capture_logs() as logs:
        error = await refusal(client, "userJoin", {"token": text, "room": "main"})
    assert error.code == "unauthorized" and reason in error.message
    assert sign_ins("refused") == before + 1
    [entry] = logged(logs, "token refused")
    assert reason in entry["reason"] and entry["log_level"] == "info"
    assert all(text not in str(e) for e in logs)
    # the refusal leaves no trace: the socket stays open and may still sign in
    assert (await sign_in(client, hs256(name="dana")))["username"] == "dana"


async def test_rooms_claim_refuses_other_rooms_forbidden(connect, server):
    client = await connect()
    token = hs256(name="erin", rooms=["team"])
    with capture_logs() as logs:
        error = await refusal(client, "userJoin", {"token": token, "room": "main"})
    assert error.code == "forbidden" and "'main'" in error.message
    [entry] = logged(logs, "room outside the token's rooms claim refused")
    assert (entry["user"], entry["room"], entry["log_level"]) == ("erin", "main", "info")
    await sign_in(client, token, room="team")
    error = await refusal(client, "userJoin", {"room": "other"})
    assert error.code == "forbidden"
    users = await server.system.gateway.presence.users("other", None, None)
    assert users.users == []


@pytest.mark.settings(auth="token", jwt_secret=JWT_SECRET)
async def test_token_mode_refuses_anonymous_joins(connect):
    client = await connect()
    with capture_logs() as logs:
        error = await refusal(client, "userJoin", {"username": "anon", "room": "main"})
    assert error.code == "unauthorized" and "needs a token" in error.message
    assert len(logged(logs, "anonymous join refused: tokens required")) == 1
    assert (await sign_in(client, hs256(name="anon")))["username"] == "anon"


async def test_anonymous_connection_cannot_switch_to_a_token(connect):
    client = await connect()
    await client.join("frank")
    with capture_logs() as logs:
        error = await refusal(client, "userJoin", {"token": hs256(name="frank"), "room": "x"})
    assert error.code == "unauthorized" and "without a token" in error.message
    assert len(logged(logs, "token refused on an anonymous connection")) == 1


async def test_join_with_another_subjects_token_is_unauthorized(connect):
    client = await connect()
    await sign_in(client, hs256(sub="u-1", name="gina"))
    with capture_logs() as logs:
        error = await refusal(
            client, "userJoin", {"token": hs256(sub="u-2", name="gina"), "room": "team"}
        )
    assert error.code == "unauthorized" and "another user" in error.message
    assert logged(logs, "token of another subject refused")[0]["user"] == "gina"


@pytest.mark.settings(jwt_secret=JWT_SECRET, name_grace_seconds=0)
async def test_a_subjects_username_is_nobody_elses(connect):
    alice = await connect()
    await sign_in(alice, hs256(sub="u-alice", name="alice"))
    anonymous = await connect()
    assert (await refusal(anonymous, "userJoin", {"username": "alice", "room": "main"})).code == (
        "username_taken"
    )
    impostor = await connect()
    error = await refusal(
        impostor, "userJoin", {"token": hs256(sub="u-other", name="alice"), "room": "main"}
    )
    assert error.code == "username_taken"
    second_tab = await connect()  # the same subject, another connection
    assert (await sign_in(second_tab, hs256(sub="u-alice", name="alice")))["username"] == "alice"
    await alice.close()
    await second_tab.close()
    # gone, and with no grace period: an anonymous user still cannot take a subject's name
    later = await connect()
    async with asyncio.timeout(10):
        while True:
            error = await refusal(later, "userJoin", {"username": "alice", "room": "main"})
            assert error.code == "username_taken"
            if "signed-in user" in error.message:
                break
            await asyncio.sleep(0.05)  # the live connections are still being closed
    # the application's word is final: another subject it names alice may have the name
    renamed = await connect()
    ack = await sign_in(renamed, hs256(sub="u-new", name="alice"))
    assert ack["username"] == "alice"


async def test_read_markers_belong_to_the_subject_across_connections(connect):
    bob = await connect()
    await bob.join("bob")
    first = (await bob.say("main", "one"))["id"]
    await bob.say("main", "two")
    tab = await connect()
    await sign_in(tab, hs256(sub="u-hana", name="hana"))
    await tab.request("markRead", {"room": "main", "id": first})
    await tab.close()
    later = await connect()
    ack = await sign_in(later, hs256(sub="u-hana", name="hana"))
    assert ack["lastRead"] == first and ack["unread"] == 1


async def test_refresh_keeps_the_connection_past_the_old_expiry(connect):
    client = await connect()
    first = hs256(sub="u-ivy", name="ivy", ttl=3)
    await sign_in(client, first)
    token = hs256(sub="u-ivy", name="ivy", ttl=3600)
    new_exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    before = sign_ins("refreshed")
    with capture_logs() as logs:
        ack = await client.request("refresh", {"token": token})
    assert sign_ins("refreshed") == before + 1
    assert ack == {"exp": new_exp} and type(ack["exp"]) is int
    assert logged(logs, "token refreshed")[0]["user"] == "ivy"
    first_exp = jwt.decode(first, options={"verify_signature": False})["exp"]
    await asyncio.sleep(first_exp - time.time() + 0.5)  # past the first token's expiry
    assert not client.closed.done()
    assert client.received("error") == []
    await client.say("main", "still here")


async def test_refresh_refusals(connect):
    anonymous = await connect()
    await anonymous.join("jack")
    error = await refusal(anonymous, "refresh", {"token": hs256(name="jack")})
    assert error.code == "unauthorized" and "not signed in" in error.message
    client = await connect()
    await sign_in(client, hs256(sub="u-kim", name="kim"))
    with capture_logs() as logs:
        error = await refusal(client, "refresh", {"token": hs256(sub="u-lee", name="kim")})
    assert error.code == "unauthorized" and "another user" in error.message
    assert len(logged(logs, "token of another subject refused")) == 1
    error = await refusal(client, "refresh", {"token": hs256(sub="u-kim", name="kimberly")})
    assert error.code == "username_mismatch"
    error = await refusal(client, "refresh", {"token": hs256(sub="u-kim", ttl=-5)})
    assert error.code == "unauthorized" and "expired" in error.message
    error = await refusal(client, "refresh", {"token": 5})
    assert error.code == "invalid"
    await client.say("main", "the connection keeps its token")


@pytest.mark.parametrize("batch", [False, True], ids=["one-per-frame", "batch"])
async def test_an_expired_token_closes_the_socket_with_4001(connect, batch):
    bob = await connect()
    await bob.join("bob")
    client = await connect(batch=batch)
    before = sign_ins("expired")
    with capture_logs() as logs:
        await sign_in(client, hs256(sub="u-max", name="max", ttl=3))
        code = await asyncio.wait_for(client.closed, 10)
    assert code == CLOSE_UNAUTHORIZED
    assert sign_ins("expired") == before + 1
    [error] = client.received("error")
    assert error["data"]["code"] == "unauthorized" and "expired" in error["data"]["message"]
    assert "ref" not in error
    [entry] = logged(logs, "token expired; connection closed")
    assert entry["user"] == "max"
    assert (await bob.event("userLeave", "main"))["data"]["username"] == "max"


async def test_rs256_tokens_from_a_jwks_endpoint_sign_in():
    key = SigningKey.rsa("kid-1")
    with jwks_server(key) as jwks:
        async with running(auth="token", jwks_url=jwks.url) as server:
            client = await ChatClient.connect(server.url)
            try:
                ack = await sign_in(client, key.sign(claims("u-ola", name="ola")))
                assert ack["username"] == "ola"
                error = await refusal(
                    client, "refresh", {"token": key.sign(claims("u-ola"), kid="kid-9")}
                )
                assert error.code == "unauthorized" and "'kid-9'" in error.message
            finally:
                await client.close()


async def test_a_signed_in_member_reads_its_private_room_over_http_with_its_token(connect, server):
    token = hs256(sub="u-pia", name="pia")
    pia, bob = await connect(), await connect()
    await sign_in(pia, token)
    await bob.join("bob")
    await pia.request("userJoin", {"room": "dm-pia"})
    await pia.request("newRoom", {"username2": "bob", "room": "dm-pia"})
    await bob.join("bob", room="dm-pia")
    await pia.say("dm-pia", "between us")
    url = f"{server.http}/api/rooms/dm-pia/messages"
    async with httpx.AsyncClient() as http:
        ok = await http.get(url, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert [m["body"] for m in ok.json()["messages"]] == ["between us"]
        for bad in (hs256(sub="u-other", name="pia"), hs256(sub="u-pia", name="pia", ttl=-5)):
            refused = await http.get(url, headers={"Authorization": f"Bearer {bad}"})
            assert refused.status_code == 403
            assert refused.json()["code"] == "room_private"
        narrow = hs256(sub="u-pia", name="pia", rooms=["main"])
        forbidden = await http.get(url, headers={"Authorization": f"Bearer {narrow}"})
        assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
        public = await http.get(f"{server.http}/api/rooms/main/messages")
        assert public.status_code == 200  # anonymous mode: public rooms need no credential


async def test_a_name_kept_for_an_anonymous_session_goes_to_a_signed_in_user(connect):
    first = await connect()
    await first.join("quinn")
    await first.close()
    squatter = await connect()
    async with asyncio.timeout(10):  # until presence has seen the close and kept the name
        while True:
            error = await refusal(squatter, "userJoin", {"username": "quinn", "room": "main"})
            if "kept for the user" in error.message:
                break
            await asyncio.sleep(0.05)
    signed_in = await connect()
    assert (await sign_in(signed_in, hs256(sub="u-quinn", name="quinn")))["username"] == "quinn"


@pytest.mark.settings(jwt_secret=JWT_SECRET, join_burst=3, join_per_second=0.01)
async def test_refreshes_share_the_join_budget(connect):
    client = await connect()
    await sign_in(client, hs256(sub="u-ray", name="ray"))
    token = hs256(sub="u-ray", name="ray")
    for _ in range(2):
        await client.request("refresh", {"token": token})
    error = await refusal(client, "refresh", {"token": token})
    assert error.code == "rate_limited" and "refreshes" in error.message


async def test_a_connection_that_closed_arms_no_expiry_timer():
    """A join may finish after its socket closed: signing that connection in must not keep it
    (and a timer) alive until the token's expiry."""
    conn = Connection(
        _ignore,
        _ignore,
        ticker=None,
        queue_bytes=1 << 20,
        queue_seconds=10,
        limiters=Limiters(*(TokenBucket(1, 1) for _ in fields(Limiters))),
    )
    expired: list[Connection] = []
    identity = Identity("u-sam", "sam", None, frozenset(), exp=0)

    async def gone() -> str:
        raise ConnectionError("the client went away")

    await conn.serve(gone, _ignore_frame, 1 << 16)
    conn.sign_in(identity, expired.append, time.time)
    await asyncio.sleep(0.05)
    assert expired == [] and conn.identity is identity


async def _ignore(_: object) -> None:
    return None


async def _ignore_frame(_: Connection, __: object) -> None:
    return None


@pytest.mark.settings(auth="token", jwt_secret=JWT_SECRET)
async def test_token_mode_http_reads_need_a_token_and_respect_the_rooms_claim(connect, server):
    writer = await connect()
    await sign_in(writer, hs256(sub="u-uma", name="uma"))
    await writer.say("main", "for members")
    url = f"{server.http}/api/rooms/main/messages"
    async with httpx.AsyncClient() as http:
        nobody = await http.get(url)
        assert nobody.status_code == 401 and nobody.json()["code"] == "unauthorized"
        with capture_logs() as logs:
            expired = await http.get(url, headers=bearer(hs256(ttl=-5)))
        assert expired.status_code == 401 and "expired" in expired.json()["message"]
        assert logged(logs, "token refused")[0]["via"] == "http"
        session = await http.get(url, headers=bearer(writer_session(server, "uma")))
        assert session.status_code == 401  # sessions sign nobody in here
        ok = await http.get(url, headers=bearer(hs256(name="vic")))
        assert [m["body"] for m in ok.json()["messages"]] == ["for members"]
        with capture_logs() as logs:
            elsewhere = await http.get(url, headers=bearer(hs256(name="vic", rooms=["team"])))
        assert elsewhere.status_code == 403 and elsewhere.json()["code"] == "forbidden"
        [entry] = logged(logs, "room outside the token's rooms claim refused")
        assert (entry["user"], entry["via"]) == ("vic", "http")
        users = await http.get(f"{server.http}/api/rooms/main/users", headers=bearer(hs256()))
        assert users.json() == {"users": ["uma"]}
        assert (await http.get(f"{server.http}/api/rooms/main/users")).status_code == 401


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def writer_session(server: Any, username: str) -> str:
    """A session as an anonymous join would have had it (valid, but not a token)."""
    return str(server.system.gateway.signer.mint(username))


async def test_presence_keeps_a_subjects_name_for_a_year_whatever_the_grace():
    now = 1000.0
    names = NameReservations(InMemoryRoomStore(), 0, lambda: now)
    names.reserve(username_key("zed"), "zed", subject_key("u-zed"))
    names.reserve(username_key("anon"), "anon", "h-anon")  # no grace: an anonymous name is free
    kept = await names.holder(username_key("zed"))
    assert kept is not None and kept.expires == now + SUBJECT_HOLD_SECONDS
    assert refusal_text(kept) == "username 'zed' belongs to a signed-in user"
    assert await names.holder(username_key("anon")) is None


async def test_a_live_anonymous_name_is_refused_to_a_token_too(connect):
    anonymous = await connect()
    await anonymous.join("bob")
    signed_in = await connect()
    error = await refusal(signed_in, "userJoin", {"token": hs256(name="bob"), "room": "main"})
    assert error.code == "username_taken"

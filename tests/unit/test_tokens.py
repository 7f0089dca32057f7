"""The token verifier (PROTOCOL.md 2.4): each claim, each refusal, and the JWKS key cache against
a local endpoint serving RS256 and ES256 keys."""

from __future__ import annotations

import asyncio
import threading
import time

import jwt
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from roomcast.gateway.auth.jwks import JwksKeys
from roomcast.gateway.auth.tokens import MAX_TOKEN_CHARS, TokenError, TokenVerifier
from roomcast.shared.auth import MODERATOR, subject_key
from roomcast.shared.config import ConfigError, load_settings
from tests.support.clock import Clock
from tests.support.tokens import JWT_SECRET, SigningKey, claims, hs256, jwks_server

pytestmark = pytest.mark.unit

LIMITS = load_settings()


def fetches(outcome: str) -> float:
    sample = REGISTRY.get_sample_value("roomcast_gateway_jwks_fetches_total", {"outcome": outcome})
    return sample or 0.0


def hs_verifier(**kwargs: object) -> TokenVerifier:
    return TokenVerifier(LIMITS, secret=JWT_SECRET.encode(), **kwargs)  # type: ignore[arg-type]


async def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenError) as err:
        await verifier.verify(token)
    return str(err.value)


# claims ----------------------------------------------------------------------------------------
async def test_hs256_token_gives_the_identity_of_its_claims():
    exp = int(time.time()) + 600
    token = jwt.encode(
        {"sub": "u-42", "exp": exp, "name": "alice", "rooms": ["main", "team"], "roles": []},
        JWT_SECRET,
        algorithm="HS256",
    )
    identity = await hs_verifier().verify(token)
    assert identity.sub == "u-42"
    assert identity.username == "alice"
    assert identity.rooms == frozenset({"main", "team"})
    assert identity.roles == frozenset()
    assert identity.exp == exp
    assert identity.key == subject_key("u-42")
    assert identity.may_join("team") and not identity.may_join("other")
    assert not identity.is_moderator


async def test_name_defaults_to_sub_and_rooms_absent_means_every_room():
    identity = await hs_verifier().verify(hs256(sub="carol"))
    assert identity.username == "carol"
    assert identity.rooms is None
    assert identity.may_join("anything")


async def test_name_claim_is_normalised_like_any_username():
    identity = await hs_verifier().verify(hs256(name="\uff42\uff4f\uff42"))  # fullwidth bob
    assert identity.username == "bob"


async def test_invalid_name_claim_is_refused_saying_why():
    message = await refused(hs_verifier(), hs256(name="bad name"))
    assert "'name' claim" in message and "white space" in message


async def test_sub_that_is_no_username_needs_a_name_claim():
    message = await refused(hs_verifier(), hs256(sub="auth0|123"))
    assert "no 'name' claim" in message and "'sub'" in message
    assert (await hs_verifier().verify(hs256(sub="auth0|123", name="dan"))).username == "dan"


async def test_rooms_claim_is_normalised_and_bad_rooms_refused():
    identity = await hs_verifier().verify(hs256(rooms=["\uff54eam"]))
    assert identity.rooms == frozenset({"team"})
    assert "'rooms' claim" in await refused(hs_verifier(), hs256(rooms=["a.b"]))
    assert "'rooms'" in await refused(hs_verifier(), hs256(rooms="main"))
    assert "'rooms'" in await refused(hs_verifier(), hs256(rooms=[1]))


async def test_moderator_role_moderates_and_other_roles_are_kept():
    identity = await hs_verifier().verify(hs256(roles=[MODERATOR, "staff"]))
    assert identity.is_moderator
    assert identity.roles == frozenset({MODERATOR, "staff"})
    assert not (await hs_verifier().verify(hs256(roles=["staff"]))).is_moderator
    assert "'roles'" in await refused(hs_verifier(), hs256(roles="moderator"))


@pytest.mark.parametrize("missing", ["sub", "exp"])
async def test_sub_and_exp_are_required(missing):
    body = claims()
    del body[missing]
    token = jwt.encode(body, JWT_SECRET, algorithm="HS256")
    assert await refused(hs_verifier(), token) == f"the token has no {missing!r} claim"


async def test_sub_must_be_a_string_of_a_bounded_length():
    assert "not valid" in await refused(hs_verifier(), hs256(sub=7))  # type: ignore[arg-type]
    assert "'sub'" in await refused(hs_verifier(), hs256(sub=""))
    assert "'sub'" in await refused(hs_verifier(), hs256(sub="x" * 256))


# refusals --------------------------------------------------------------------------------------
async def test_expired_token_is_refused():
    assert "expired" in await refused(hs_verifier(), hs256(ttl=-5))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_token_not_valid_yet_is_refused_beyond_the_clock_skew(claim):
    now = int(time.time())
    message = await refused(hs_verifier(), hs256(**{claim: now + 600}))
    assert message == f"the token is not valid yet ({claim} is in the future)"
    # an issuer whose clock runs a few seconds ahead is no reason to refuse
    assert (await hs_verifier().verify(hs256(**{claim: now + 10}))).sub == "u-1"
    assert f"{claim!r} claim is not a number" in await refused(hs_verifier(), hs256(**{claim: "x"}))


async def test_wrong_secret_is_refused():
    token = hs256("another-secret-that-is-long-enough-too")
    assert await refused(hs_verifier(), token) == "the token's signature does not verify"


async def test_garbage_and_oversized_tokens_are_refused():
    assert "well-formed" in await refused(hs_verifier(), "not.a.jwt")
    assert "well-formed" in await refused(hs_verifier(), "x")
    assert str(MAX_TOKEN_CHARS) in await refused(hs_verifier(), "a" * (MAX_TOKEN_CHARS + 1))
    assert str(MAX_TOKEN_CHARS) in await refused(hs_verifier(), "")


async def test_unsigned_tokens_are_refused():
    token = jwt.encode(claims(), None, algorithm="none")
    message = await refused(hs_verifier(), token)
    assert "'none'" in message and "use HS256" in message


async def test_a_server_without_keys_accepts_no_token():
    verifier = TokenVerifier(LIMITS)
    assert not verifier.configured
    assert "accepts no tokens" in await refused(verifier, hs256())


async def test_audience_and_issuer_are_checked_when_configured():
    verifier = hs_verifier(audience="roomcast", issuer="https://login.example")
    good = hs256(aud="roomcast", iss="https://login.example")
    assert (await verifier.verify(good)).sub == "u-1"
    assert "(aud)" in await refused(verifier, hs256(aud="other", iss="https://login.example"))
    assert "'aud'" in await refused(verifier, hs256(iss="https://login.example"))
    assert "(iss)" in await refused(verifier, hs256(aud="roomcast", iss="https://evil.example"))
    # a token meant for some audience is not taken by a server that expects none
    assert "(aud)" in await refused(hs_verifier(), hs256(aud="another-app"))


# settings --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"auth": "token"}, "ROOMCAST_AUTH=token needs ROOMCAST_JWT_SECRET or ROOMCAST_JWKS_URL"),
        ({"auth": "signed"}, "ROOMCAST_AUTH: Input should be 'anonymous' or 'token'"),
        ({"jwt_secret": "short"}, "ROOMCAST_JWT_SECRET: must be at least 32 bytes"),
        ({"jwks_url": "file:///etc/passwd"}, "ROOMCAST_JWKS_URL: must be the http(s) URL"),
        ({"jwks_url": "https://"}, "ROOMCAST_JWKS_URL: must be the http(s) URL"),
        ({"jwks_url": "http://h:port/"}, "ROOMCAST_JWKS_URL: must be the http(s) URL"),
        ({"jwt_audience": "x" * 1001}, "ROOMCAST_JWT_AUDIENCE"),
    ],
)
def test_bad_auth_settings_name_the_variable(values, message):
    with pytest.raises(ConfigError) as err:
        load_settings(**values)
    assert str(err.value).startswith(message)
    assert "short" not in str(err.value) and "passwd" not in str(err.value)  # secrets, URLs


def test_auth_settings_that_work():
    assert load_settings().auth == "anonymous"
    # empty is unset (compose writes an unset ${VAR:-} so)
    empty = load_settings(jwt_secret="", jwks_url=" ", jwt_audience="", jwt_issuer="")
    assert (empty.jwt_secret, empty.jwks_url, empty.jwt_audience, empty.jwt_issuer) == (None,) * 4
    assert not TokenVerifier.from_settings(empty).configured
    with pytest.raises(ConfigError):
        load_settings(auth="token", jwt_secret="", jwks_url="")
    assert load_settings(auth="token", jwt_secret=JWT_SECRET).auth == "token"
    settings = load_settings(auth="token", jwks_url=" https://login.example/jwks.json ")
    assert settings.jwks_url == "https://login.example/jwks.json"
    assert TokenVerifier.from_settings(settings).configured


# JWKS ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.rsa("rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey.ec("ec-1")


def jwks_verifier(url: str, clock: Clock, *, cooldown: float = 10.0) -> TokenVerifier:
    keys = JwksKeys(url, timeout=5, lifespan=300, cooldown=cooldown, clock=clock)
    return TokenVerifier(LIMITS, jwks=keys)


async def test_rs256_and_es256_tokens_verify_with_the_served_keys(rsa_key, ec_key):
    with jwks_server(rsa_key, ec_key) as server:
        verifier = jwks_verifier(server.url, Clock())
        assert (await verifier.verify(rsa_key.sign(claims("r")))).sub == "r"
        assert (await verifier.verify(ec_key.sign(claims("e", name="eve")))).username == "eve"
        assert server.requests == 1


async def test_known_keys_are_cached_until_their_lifespan_ends(rsa_key):
    clock = Clock()
    with jwks_server(rsa_key) as server:
        keys = JwksKeys(server.url, timeout=5, lifespan=300, cooldown=10, clock=clock)
        verifier = TokenVerifier(LIMITS, jwks=keys)
        for i in range(5):
            await verifier.verify(rsa_key.sign(claims(f"u{i}")))
        assert server.requests == 1
        clock.now += 299
        await verifier.verify(rsa_key.sign(claims()))
        await keys.settled()
        assert server.requests == 1
        clock.now += 2
        await verifier.verify(rsa_key.sign(claims()))
        await keys.settled()
        assert server.requests == 2


async def test_a_stale_key_set_is_refetched_without_making_a_join_wait(rsa_key):
    """The endpoint holds its answer until the test releases it: a verification that waited
    for the fetch of a stale set would never finish."""
    clock = Clock()
    with jwks_server(rsa_key) as server:
        keys = JwksKeys(server.url, timeout=5, lifespan=300, cooldown=10, clock=clock)
        verifier = TokenVerifier(LIMITS, jwks=keys)
        await verifier.verify(rsa_key.sign(claims()))
        server.hold = threading.Event()
        clock.now += 301
        async with asyncio.timeout(10):
            assert (await verifier.verify(rsa_key.sign(claims("quick")))).sub == "quick"
        server.hold.set()
        await keys.settled()
        assert server.requests == 2


async def test_a_rotated_key_is_fetched_for_its_unknown_kid(rsa_key, ec_key):
    clock = Clock()
    with jwks_server(rsa_key) as server:
        verifier = jwks_verifier(server.url, clock)
        await verifier.verify(rsa_key.sign(claims()))
        rotated = SigningKey.ec("ec-2")
        server.keys = [rotated]  # the identity provider rotates
        clock.now += 11  # past the cooldown since the first fetch
        assert (await verifier.verify(rotated.sign(claims("new")))).sub == "new"
        assert server.requests == 2
        # the old key is gone from the set: its tokens no longer verify
        message = await refused(verifier, rsa_key.sign(claims()))
        assert "'rsa-1'" in message and server.requests == 2  # within the cooldown: not asked


async def test_a_flood_of_unknown_kids_costs_one_fetch_per_cooldown(rsa_key):
    clock = Clock()
    with jwks_server(rsa_key) as server:
        verifier = jwks_verifier(server.url, clock)
        await verifier.verify(rsa_key.sign(claims()))
        clock.now += 11
        for i in range(50):
            message = await refused(verifier, rsa_key.sign(claims(), kid=f"made-up-{i}"))
            assert message == f"no signing key has the token's key id (kid) 'made-up-{i}'"
        assert server.requests == 2
        clock.now += 11
        await refused(verifier, rsa_key.sign(claims(), kid="made-up-again"))
        assert server.requests == 3
        assert (await verifier.verify(rsa_key.sign(claims("still")))).sub == "still"


async def test_an_unreachable_jwks_is_unverifiable_and_retried_after_the_cooldown(rsa_key):
    clock = Clock()
    with jwks_server(rsa_key) as server:
        server.status = 503
        verifier = jwks_verifier(server.url, clock)
        failed_before = fetches("failed")
        with capture_logs() as logs:
            message = await refused(verifier, rsa_key.sign(claims()))
        assert fetches("failed") == failed_before + 1
        assert message == "the signing keys could not be fetched; try again later"
        failed = [e for e in logs if e["event"].startswith("JWKS key set not fetched")]
        assert len(failed) == 1 and failed[0]["log_level"] == "warning"
        assert "503" in failed[0]["reason"]
        await refused(verifier, rsa_key.sign(claims()))
        assert server.requests == 1  # not hammered while it is down
        server.status = 200
        clock.now += 11
        ok_before = fetches("ok")
        assert (await verifier.verify(rsa_key.sign(claims("back")))).sub == "back"
        assert fetches("ok") == ok_before + 1
        assert server.requests == 2


async def test_known_keys_stay_in_use_while_the_jwks_is_down(rsa_key):
    clock = Clock()
    with jwks_server(rsa_key) as server:
        keys = JwksKeys(server.url, timeout=5, lifespan=300, cooldown=10, clock=clock)
        verifier = TokenVerifier(LIMITS, jwks=keys)
        await verifier.verify(rsa_key.sign(claims()))
        server.status = 500
        clock.now += 400  # stale: fetched again, which fails
        assert (await verifier.verify(rsa_key.sign(claims("kept")))).sub == "kept"
        await keys.settled()
        assert server.requests == 2
        assert (await verifier.verify(rsa_key.sign(claims("still")))).sub == "still"
        assert server.requests == 2  # within the cooldown of the failed fetch: not asked


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"keys": []}', b'{"keys": [{}]}'])
async def test_a_broken_key_set_is_unverifiable(rsa_key, body):
    with jwks_server(rsa_key) as server:
        server.body = body
        verifier = jwks_verifier(server.url, Clock())
        assert "could not be fetched" in await refused(verifier, rsa_key.sign(claims()))


async def test_fetches_run_off_the_event_loop_and_only_once_at_a_time(rsa_key):
    """The endpoint answers only when the loop releases it: a fetch that blocked the loop
    would never be answered (the endpoint gives up with 504 and the tokens are refused)."""
    with jwks_server(rsa_key) as server:
        server.hold = threading.Event()
        verifier = jwks_verifier(server.url, Clock())
        waiting = [
            asyncio.create_task(verifier.verify(rsa_key.sign(claims(f"u{i}")))) for i in range(5)
        ]
        assert await asyncio.to_thread(server.asked.wait, 10)
        server.hold.set()
        identities = await asyncio.gather(*waiting)
        assert [i.sub for i in identities] == [f"u{i}" for i in range(5)]
        assert server.requests == 1


async def test_token_header_must_name_a_kid_with_a_key_of_its_algorithm(rsa_key, ec_key):
    with jwks_server(rsa_key, ec_key) as server:
        verifier = jwks_verifier(server.url, Clock())
        assert "no key id" in await refused(verifier, rsa_key.sign(claims(), kid=None))
        # an RS256 token that names the EC key's kid
        mixed = rsa_key.sign(claims(), kid="ec-1")
        assert await refused(verifier, mixed) == "key 'ec-1' is for ES256, not RS256"


async def test_hs256_is_refused_when_only_a_key_set_is_configured(rsa_key):
    """No algorithm confusion: an HS256 token 'signed' with a public key never verifies."""
    with jwks_server(rsa_key) as server:
        verifier = jwks_verifier(server.url, Clock())
        message = await refused(verifier, hs256(JWT_SECRET))
        assert message == "tokens signed with 'HS256' are not accepted; use RS256, ES256"
        assert server.requests == 0


async def test_a_header_pyjwt_refuses_is_unauthorized_not_internal():
    token = jwt.encode(claims(), JWT_SECRET, algorithm="HS256", headers={"crit": []})
    assert "crit" in await refused(hs_verifier(), token)

"""Sign-in tokens (PROTOCOL.md 2.4): a JWT in, an `Identity` out, or a `TokenError` that says
in plain words why not (the client gets it as `unauthorized`).

- HS256 with `ROOMCAST_JWT_SECRET`; RS256 and ES256 with the key of the token's `kid` at
  `ROOMCAST_JWKS_URL` (`jwks.py`). The algorithm is taken from a fixed list per configured
  key, never from the token alone: no `none`, no HS256 signed with a public key.
- `sub` and `exp` are required; `name` (default `sub`) is normalised as any username, `rooms`
  as room names; `roles` is kept as given. `nbf` and `iat` are checked when present, allowing
  `CLOCK_SKEW` seconds for a token issuer whose clock runs ahead (never for `exp`: the socket
  closes at `exp` exactly); `aud` and `iss` when `ROOMCAST_JWT_AUDIENCE` / `_ISSUER` are set.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jwt
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as ClaimsError

from roomcast.shared.auth import Identity
from roomcast.shared.config import Limits, Settings
from roomcast.shared.names import InvalidNameError, normalise_room, normalise_username

from .jwks import JwksKeys, KeyUnavailableError

MAX_TOKEN_CHARS = 8192
MAX_SUB_CHARS = 255
MAX_ROOMS = 1000
MAX_ROLES = 64
CLOCK_SKEW = 30.0  # seconds an nbf or iat may lie ahead of this gateway's clock
SYMMETRIC = "HS256"
ASYMMETRIC = ("RS256", "ES256")


class TokenError(Exception):
    """A token that does not sign anyone in; the message is for the client."""


class Claims(BaseModel):
    """The claims roomcast reads; others are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sub: StrictStr = Field(min_length=1, max_length=MAX_SUB_CHARS)
    exp: StrictInt | StrictFloat
    name: StrictStr | None = None
    rooms: list[StrictStr] | None = Field(None, max_length=MAX_ROOMS)
    roles: list[StrictStr] = Field(default_factory=list, max_length=MAX_ROLES)


class TokenVerifier:
    def __init__(
        self,
        limits: Limits,
        *,
        secret: bytes | None = None,
        jwks: JwksKeys | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self._limits = limits
        self._secret = secret
        self._jwks = jwks
        self._audience = audience
        self._issuer = issuer

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        secret = settings.jwt_secret
        jwks = None
        if settings.jwks_url is not None:
            jwks = JwksKeys(str(settings.jwks_url), timeout=settings.request_timeout)
        return cls(
            settings,
            secret=secret.get_secret_value().encode() if secret is not None else None,
            jwks=jwks,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

    @property
    def configured(self) -> bool:
        """Whether any token can verify (a secret or a key set is configured)."""
        return self._secret is not None or self._jwks is not None

    async def verify(self, token: str) -> Identity:
        if not self.configured:
            raise TokenError("this server accepts no tokens (no key is configured)")
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenError(f"a token is 1 to {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenError("the token is not a well-formed JWT") from None
        except jwt.PyJWTError as exc:  # a header PyJWT refuses (crit, ...)
            raise TokenError(_why(exc)) from None
        alg = header.get("alg")
        key = await self._key(alg, header.get("kid"))
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["sub", "exp"], "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(_why(exc)) from None
        _check_started(payload)
        return self._identity(payload)

    async def _key(self, alg: object, kid: object) -> Any:
        if alg == SYMMETRIC and self._secret is not None:
            return self._secret
        if alg in ASYMMETRIC and self._jwks is not None:
            if not isinstance(kid, str) or not kid:
                raise TokenError("the token's header has no key id (kid)")
            try:
                jwk = await self._jwks.key(kid)
            except KeyUnavailableError as exc:
                raise TokenError(str(exc)) from None
            if jwk.algorithm_name != alg:
                raise TokenError(f"key {kid[:64]!r} is for {jwk.algorithm_name}, not {alg}")
            return jwk.key
        accepted = ([SYMMETRIC] if self._secret is not None else []) + (
            list(ASYMMETRIC) if self._jwks is not None else []
        )
        shown = repr(alg)[:40]
        raise TokenError(f"tokens signed with {shown} are not accepted; use {', '.join(accepted)}")

    def _identity(self, payload: dict[str, Any]) -> Identity:
        try:
            claims = Claims.model_validate(payload)
        except ClaimsError as exc:
            first = exc.errors()[0]
            claim, *within = first["loc"]
            where = f" (item {within[0]})" if within else ""
            reason = first["msg"].lower()
            raise TokenError(f"the token's claim {claim!r}{where}: {reason}") from None
        try:
            name = claims.sub if claims.name is None else claims.name
            username = normalise_username(name, self._limits)
        except InvalidNameError as exc:
            if claims.name is None:
                raise TokenError(
                    f"the token has no 'name' claim and its 'sub' is not a username ({exc})"
                ) from None
            raise TokenError(f"the token's 'name' claim is not a username: {exc}") from None
        rooms = None
        if claims.rooms is not None:
            try:
                rooms = frozenset(normalise_room(room, self._limits) for room in claims.rooms)
            except InvalidNameError as exc:
                raise TokenError(f"the token's 'rooms' claim: {exc}") from None
        return Identity(
            sub=claims.sub,
            username=username,
            rooms=rooms,
            roles=frozenset(claims.roles),
            exp=claims.exp,  # as the token has it: an int stays an int on the wire
        )


def _check_started(payload: dict[str, Any]) -> None:
    """`nbf` and `iat`, with `CLOCK_SKEW` (PyJWT's leeway would stretch `exp` as well)."""
    now = time.time()
    for claim in ("nbf", "iat"):
        value = payload.get(claim)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise TokenError(f"the token's {claim!r} claim is not a number")
        if value > now + CLOCK_SKEW:
            raise TokenError(f"the token is not valid yet ({claim} is in the future)")


def _why(exc: jwt.PyJWTError) -> str:
    """The client's reason for a refusal by PyJWT; never the token itself."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the token expired; get a new one"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token has no {exc.claim!r} claim"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "the token is not valid yet (nbf or iat is in the future)"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "the token is not meant for this server (aud)"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "the token is not from the expected issuer (iss)"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "the token's signature does not verify"
    if isinstance(exc, jwt.InvalidKeyError):
        return "the token's key cannot verify it"
    return f"the token is not valid: {str(exc)[:120]}"

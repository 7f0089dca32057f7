"""Settings: every `ROOMCAST_*` variable, parsed once into one typed object.

A bad value stops a process at start with one line that names the variable and what is wrong
(`ConfigError`); secrets are `SecretStr`, so they never reach a log or a traceback.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    AnyUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "ROOMCAST_"


class ConfigError(Exception):
    """A setting has a value roomcast cannot run with."""


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_origin(text: str) -> str | None:
    """`scheme://host:port` with the scheme's default port made explicit (so `http://h` and
    `http://h:80` compare equal), or None when `text` is not an http(s) origin."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username is not None:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS[scheme]}"


class Limits(BaseSettings):
    """The protocol's limits (PROTOCOL.md, "Names and limits")."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    max_frame_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024)
    max_username_chars: int = Field(32, ge=1, le=256)
    max_room_chars: int = Field(64, ge=1, le=200)
    # UTF-8 bytes: names are routing-key words, and AMQP keys end at 255 bytes (shared/topics.py)
    max_username_bytes: int = Field(64, ge=4, le=128)
    max_room_bytes: int = Field(128, ge=4, le=200)
    max_body_chars: int = Field(2000, ge=1, le=100_000)
    rate_per_second: float = Field(10.0, gt=0)  # updateChat, per user (all of a session's sockets)
    rate_burst: int = Field(20, ge=1)
    typing_per_second: float = Field(5.0, gt=0)
    typing_burst: int = Field(10, ge=1)
    join_per_second: float = Field(5.0, gt=0)  # userJoin plus userLeave, per connection
    join_burst: int = Field(20, ge=1)
    invite_per_second: float = Field(1.0, gt=0)  # newRoom, per connection
    invite_burst: int = Field(5, ge=1)
    history_default: int = Field(50, ge=1, le=1000)
    recovery_max: int = Field(500, ge=1, le=10_000)
    http_page_max: int = Field(200, ge=1, le=10_000)
    max_rooms_per_connection: int = Field(100, ge=1, le=100_000)


class Settings(Limits):
    """Everything a roomcast process reads from its environment."""

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    mongo_url: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    mongo_db: str = Field("roomcast", pattern=r"^[A-Za-z0-9_-]{1,63}$")
    exchange: str = Field("roomcast", pattern=r"^[A-Za-z0-9_.:-]{1,127}$")
    secret: SecretStr | None = None
    # or a file that holds it (docker compose generates one into a volume): read_secret()
    secret_file: Path | None = None

    request_timeout: float = Field(5.0, gt=0, le=120)
    publish_timeout: float = Field(10.0, gt=0, le=120)
    heartbeat_interval: float = Field(2.0, gt=0, le=60)
    heartbeat_misses: int = Field(3, ge=2, le=20)
    send_queue_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    send_queue_seconds: float = Field(10.0, gt=0, le=3600)
    # deprecated and ignored: `batch=1` sockets coalesce what queues within one loop iteration
    # (and while their transport is back-pressured), with no tick; still accepted so no
    # deployment's settings break
    batch_tick_ms: float = Field(2.0, gt=0, le=50)
    # while the gateway is busy, sockets are written at most once per this many ms, so several
    # events share one send() and (batch=1) one frame; idle, at the end of the loop turn; 0: never
    # paced (services/gateway/flushing.py)
    flush_pace_ms: float = Field(8.0, ge=0, le=50)
    # deliveries waiting for a subscription's handler; beyond it they are dropped, counted, and
    # the gateway repairs its rooms from history (a gap)
    bus_inbox_limit: int = Field(100_000, ge=100, le=10_000_000)
    websocket_compression: bool = False
    drain_seconds: float = Field(10.0, ge=0, le=600)
    # how long a username stays reserved for its session after its last connection (2.2)
    name_grace_seconds: float = Field(600.0, ge=0, le=30 * 86400)
    # sign-in (protocol 2.4): anonymous names and sessions (tokens also taken when a key is
    # set), or a signed token for every join; tokens verify with the HS256 secret or the keys
    # at the JWKS URL, and must name the audience and issuer when those are set
    auth: Literal["anonymous", "token"] = "anonymous"
    jwt_secret: SecretStr | None = None
    jwt_secret_file: Path | None = None  # or a file that holds it: _from_files
    jwks_url: str | None = None
    jwt_audience: str | None = Field(None, min_length=1, max_length=1000)
    jwt_issuer: str | None = Field(None, min_length=1, max_length=1000)
    # handshakes (protocol 2.2): open sockets per client address (0: no limit), the proxies whose
    # forwarded headers are believed, which headers those are, and the browser origins let in
    max_connections_per_ip: int = Field(1000, ge=0, le=10_000_000)
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    forwarded_headers: Literal["x-forwarded", "forwarded"] = "x-forwarded"
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # WebSocket pings; a socket whose peer leaves one unanswered this long is closed
    ping_interval: float = Field(20.0, gt=0, le=3600)
    ping_timeout: float = Field(20.0, gt=0, le=3600)

    # webhooks (protocol 2.4): events are POSTed to this URL, signed with the secret; presence
    # and history emit only while it is set; roomcast.webhooks.sender retries with backoff
    webhook_url: AnyHttpUrl | None = None
    webhook_secret: SecretStr | None = None
    webhook_timeout: float = Field(10.0, gt=0, le=300)  # seconds per POST
    webhook_concurrency: int = Field(4, ge=1, le=1000)  # POSTs in flight per sender
    webhook_retry_first: float = Field(0.5, gt=0, le=3600)  # seconds before the first retry
    webhook_retry_max: float = Field(60.0, gt=0, le=86400)  # the longest pause between tries
    webhook_give_up_seconds: float = Field(86400.0, ge=0)  # an event this old is dropped; 0: never

    # the application's backend API (2.4): its keys, comma-separated (two while rotating), and
    # each key's request budget
    api_key: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    api_key_file: Path | None = None  # or a file that holds them: _from_files
    api_rate_per_second: float = Field(20.0, gt=0)
    api_burst: int = Field(100, ge=1)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("amqp_url", "mongo_url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        try:
            url = AnyUrl(raw)
        except ValidationError as exc:
            raise ValueError("is not a URL") from exc
        allowed = {"amqp", "amqps"} if raw.startswith("amqp") else {"mongodb", "mongodb+srv"}
        if url.scheme not in allowed:
            raise ValueError(f"scheme must be one of {sorted(allowed)}, not {url.scheme!r}")
        return value

    @field_validator("secret", "webhook_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @model_validator(mode="before")
    @classmethod
    def _from_files(cls, data: Any) -> Any:
        """`ROOMCAST_JWT_SECRET_FILE`, `ROOMCAST_API_KEY_FILE`: the file's text stands for the
        variable (a mounted Kubernetes Secret), judged by the same validators. Read at load,
        unlike `read_secret`: sign-in and the backend API read the settings directly."""
        if not isinstance(data, dict):
            return data
        for field in ("jwt_secret", "api_key"):
            path = data.get(f"{field}_file")
            if path in (None, ""):
                continue
            variable = f"{ENV_PREFIX}{field.upper()}"
            if data.get(field) not in (None, ""):
                raise ValueError(f"{variable} and {variable}_FILE are both set: keep one")
            data = {**data, field: _file_text(f"{variable}_FILE", Path(path), minimum=1)}
        return data

    @model_validator(mode="after")
    def _one_secret(self) -> Settings:
        if self.secret is not None and self.secret_file is not None:
            raise ValueError(
                f"{ENV_PREFIX}SECRET and {ENV_PREFIX}SECRET_FILE are both set: keep one"
            )
        return self

    @field_validator(
        "webhook_url",
        "webhook_secret",
        "jwt_secret",
        "jwt_secret_file",
        "jwks_url",
        "jwt_audience",
        "jwt_issuer",
        "api_key_file",
        mode="before",
    )
    @classmethod
    def _unset_when_empty(cls, value: Any) -> Any:
        """`ROOMCAST_WEBHOOK_URL=` (as compose writes an unset `${VAR:-}`) means no webhooks;
        likewise an empty sign-in key, audience or issuer is none."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _webhook_retries(self) -> Settings:
        if self.webhook_retry_first > self.webhook_retry_max:
            raise ValueError(
                f"{ENV_PREFIX}WEBHOOK_RETRY_FIRST ({self.webhook_retry_first:g}) is longer than "
                f"{ENV_PREFIX}WEBHOOK_RETRY_MAX ({self.webhook_retry_max:g})"
            )
        return self

    @field_validator("api_key", mode="before")
    @classmethod
    def _api_keys(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            return value
        keys = [part.strip() for part in value.split(",") if part.strip()]
        for i, key in enumerate(keys, 1):
            if len(key) < 16:
                raise ValueError(f"key {i} has {len(key)} characters; at least 16 needed")
        return tuple(SecretStr(key) for key in keys)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        networks = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            try:
                networks.append(ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return tuple(networks)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return value
        origins = []
        for item in filter(None, (str(part).strip() for part in items)):
            origin = "*" if item == "*" else normalise_origin(item)
            if origin is None:
                raise ValueError(
                    f"{item!r} is not an origin: write scheme://host[:port] (http or https, "
                    "no path), or * for any"
                )
            origins.append(origin)
        return tuple(origins)

    @field_validator("jwt_secret")
    @classmethod
    def _jwt_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (HS256 needs a 256-bit key)")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value.strip())
            _ = parts.port  # raises ValueError for a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be the http(s) URL of a JWKS document, "
                "e.g. https://login.example.com/.well-known/jwks.json"
            )
        return value.strip()

    @model_validator(mode="after")
    def _token_keys(self) -> Settings:
        if self.auth == "token" and self.jwt_secret is None and self.jwks_url is None:
            raise ValueError(
                f"{ENV_PREFIX}AUTH=token needs {ENV_PREFIX}JWT_SECRET or {ENV_PREFIX}JWKS_URL "
                "to verify tokens with"
            )
        return self

    @property
    def gateway_expiry(self) -> float:
        """How long presence waits for a silent gateway before forgetting its users."""
        return self.heartbeat_interval * self.heartbeat_misses


def read_secret(settings: Settings) -> SecretStr | None:
    """`ROOMCAST_SECRET`, or what `ROOMCAST_SECRET_FILE` holds (white space around it dropped),
    or None when neither is set. Read when a process needs it, not when settings load, so
    a service without sessions never depends on the file."""
    if settings.secret_file is None:
        return settings.secret
    return SecretStr(_file_text(f"{ENV_PREFIX}SECRET_FILE", settings.secret_file, minimum=16))


def _file_text(variable: str, path: Path, *, minimum: int) -> str:
    """What a `*_FILE` setting's file holds, white space around it dropped, or a `ConfigError`
    naming the variable (not a ValueError: pydantic lets it through as it is)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{variable}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{variable}: {path} cannot be read ({reason})") from None
    if len(text) < minimum:
        raise ConfigError(
            f"{variable}: {path} holds {len(text)} characters; at least {minimum} needed"
        )
    return text


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (and explicit overrides) or raise a one-line `ConfigError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule across settings: its message names them
            raise ConfigError(message) from None
        field = str(first["loc"][0])
        value = first.get("input")
        hidden = "secret" in field or "url" in field or "key" in field
        shown = "" if hidden else f" (got {value!r})"
        raise ConfigError(f"{ENV_PREFIX}{field.upper()}: {message}{shown}") from None

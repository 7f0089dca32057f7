"""docker-compose.yml, read as a recipe for local processes.

The compose-shaped system test starts roomcast's compose services as processes on this machine
instead of containers: the same commands (what compose passes after the image's `roomcast`
entrypoint) and the same environment, with the compose network's hostnames (`rabbitmq`,
`mongodb`, ...) pointed at 127.0.0.1 and their ports replaced by the ones the test's own servers
listen on. Reading the file, rather than restating it, keeps that test honest about the stack
users actually run. Named volumes can be given local directories: a path under a volume's mount
point, in a command or the environment, then names the same file in that directory. One-shot
services of the image with an entrypoint of their own (the secret generator) are `ComposeJob`s.

Interpolation follows Compose: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}` and `${VAR+alt}`, against the mapping given (not
the process environment, so the result is reproducible), with defaults interpolated in turn.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"

#: The first argument of each roomcast command, i.e. the service a process runs.
ROLES = ("gateway", "history", "presence", "webhooks", "dev")


class ComposeError(ValueError):
    """docker-compose.yml cannot be read as roomcast's stack."""


@dataclass(frozen=True)
class ComposeService:
    """One roomcast service of the compose file, as a local process would run it."""

    name: str
    #: The arguments after `roomcast`, exactly as compose passes them.
    args: tuple[str, ...]
    #: Its environment, interpolated, with compose hostnames mapped to local addresses.
    environment: Mapping[str, str] = field(default_factory=dict)
    #: How many containers compose starts (`deploy.replicas`, default 1).
    replicas: int = 1
    #: Mount point in the container -> named volume, for each named volume it mounts.
    volumes: Mapping[str, str] = field(default_factory=dict)

    @property
    def role(self) -> str:
        return self.args[0]

    @property
    def port(self) -> int | None:
        """The `--port` compose gives the service (its port inside the compose network)."""
        value = _option(self.args, "--port")
        return int(value) if value is not None else None

    def argv(self, port: int | None = None, host: str = "127.0.0.1") -> list[str]:
        """The arguments for a local process: `--host` set to `host`, `--port` to `port`."""
        args = list(self.args)
        _set_option(args, "--host", host)
        if port is not None:
            _set_option(args, "--port", str(port))
        return args


@dataclass(frozen=True)
class ComposeJob:
    """A one-shot service of the roomcast image that runs its own entrypoint, not `roomcast`."""

    name: str
    #: entrypoint + command, with paths under the given volumes mapped to local directories.
    argv: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=dict)
    volumes: Mapping[str, str] = field(default_factory=dict)


def load_compose(path: Path = COMPOSE_FILE, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as data, every string interpolated against `env` (default: empty)."""
    with path.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ComposeError(f"{path}: no services")
    interpolated = _interpolate_tree(data, dict(env or {}))
    assert isinstance(interpolated, dict)
    return interpolated


def roomcast_services(
    path: Path = COMPOSE_FILE,
    *,
    ports: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
    host: str | None = "127.0.0.1",
    volumes: Mapping[str, Path] | None = None,
) -> dict[str, ComposeService]:
    """Every service that runs `roomcast <role>` from the roomcast image, by service name.

    `ports` maps a compose hostname (`rabbitmq`, `mongodb`, ...) to the local port that stands in
    for it; a URL in the environment whose host is a compose service gets `host` and that port
    (its own port when the hostname is not in `ports`). `host=None` leaves the environment as
    compose gives it. `env` feeds `${...}` interpolation. `volumes` maps named volumes to local
    directories: an environment value under one's mount point is rewritten to that directory.
    """
    data = load_compose(path, env)
    services: dict[str, Any] = data["services"]
    hostnames = _hostnames(services)
    unknown = set(ports or {}) - hostnames
    if unknown:
        raise ComposeError(f"not compose hostnames: {sorted(unknown)}")
    result = {}
    for name, spec in services.items():
        if not _runs_roomcast(spec) or "entrypoint" in spec:
            continue
        args = _command(name, spec)
        environment = _environment(name, spec)
        if host is not None:
            environment = {
                key: _map_url(value, hostnames, dict(ports or {}), host)
                for key, value in environment.items()
            }
        mounts = _named_mounts(name, spec, data)
        environment = {
            key: _map_path(value, mounts, volumes or {}) for key, value in environment.items()
        }
        replicas = int((spec.get("deploy") or {}).get("replicas", 1))
        result[name] = ComposeService(name, tuple(args), environment, replicas, mounts)
    if not result:
        raise ComposeError(f"{path}: no service runs the roomcast image")
    return result


def compose_jobs(
    path: Path = COMPOSE_FILE,
    *,
    env: Mapping[str, str] | None = None,
    volumes: Mapping[str, Path] | None = None,
) -> dict[str, ComposeJob]:
    """Every service of the roomcast image with an entrypoint of its own, by service name;
    `volumes` as for `roomcast_services`, applied to its arguments and environment."""
    data = load_compose(path, env)
    result = {}
    for name, spec in data["services"].items():
        if not _runs_roomcast(spec) or "entrypoint" not in spec:
            continue
        argv = [*_words(spec["entrypoint"]), *_words(spec.get("command") or [])]
        mounts = _named_mounts(name, spec, data)
        local = volumes or {}
        result[name] = ComposeJob(
            name,
            tuple(_map_path(arg, mounts, local) for arg in argv),
            {k: _map_path(v, mounts, local) for k, v in _environment(name, spec).items()},
            mounts,
        )
    return result


# -- interpolation ---------------------------------------------------------------------------

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(
    r"\$(?:(?P<escaped>\$)"
    rf"|(?P<bare>{_NAME})"
    rf"|\{{(?P<braced>{_NAME})(?:(?P<op>:?[-?+])(?P<arg>(?:[^{{}}]|\{{[^{{}}]*\}})*))?\}}"
    r"|(?P<invalid>))"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """`value` with Compose's `$` syntax resolved against `env`."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["bare"]:
            return env.get(match["bare"], "")
        name = match["braced"]
        if name is None:
            raise ComposeError(f"invalid interpolation in {value!r}")
        op, arg = match["op"], match["arg"] or ""
        present = name in env
        usable = present and (env[name] != "" or not (op or "").startswith(":"))
        if op is None:
            return env.get(name, "")
        if op.endswith("-"):
            return env[name] if usable else interpolate(arg, env)
        if op.endswith("?"):
            if not usable:
                raise ComposeError(f"required variable {name} is missing: {arg or 'no message'}")
            return env[name]
        # `+`: the alternative when set.
        return interpolate(arg, env) if usable else ""

    return _TOKEN.sub(replace, value)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


# -- services --------------------------------------------------------------------------------


def _runs_roomcast(spec: Mapping[str, Any]) -> bool:
    image = str(spec.get("image", ""))
    return image.split(":")[0].rsplit("/", 1)[-1] == "roomcast"


def _command(name: str, spec: Mapping[str, Any]) -> list[str]:
    command = spec.get("command")
    if command is None:
        raise ComposeError(f"service {name}: no command (the image's default is `roomcast dev`)")
    args = shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]
    if args and args[0] == "roomcast":
        args = args[1:]
    if not args or args[0] not in ROLES:
        raise ComposeError(f"service {name}: command {args!r} does not start with one of {ROLES}")
    return args


def _words(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(item) for item in value]


def _named_mounts(name: str, spec: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, str]:
    """Mount point -> named volume for each named volume the service mounts (short or long
    syntax); bind mounts and tmpfs are left out."""
    named = set(data.get("volumes") or {})
    mounts = {}
    for entry in spec.get("volumes") or []:
        if isinstance(entry, dict):
            source, target = str(entry.get("source", "")), str(entry.get("target", ""))
            if entry.get("type", "volume") != "volume":
                continue
        else:
            parts = str(entry).split(":")
            if len(parts) < 2:
                continue
            source, target = parts[0], parts[1]
        if source in named:
            mounts[target.rstrip("/") or "/"] = source
        elif source and not source.startswith((".", "/", "~")):
            raise ComposeError(f"service {name}: volume {source!r} is not declared")
    return mounts


def _map_path(value: str, mounts: Mapping[str, str], local: Mapping[str, Path]) -> str:
    """`value` with a leading mount point of a volume in `local` replaced by its directory."""
    for target, volume in mounts.items():
        if volume in local and (value == target or value.startswith(target + "/")):
            return str(local[volume]) + value[len(target) :]
    return value


def _environment(name: str, spec: Mapping[str, Any]) -> dict[str, str]:
    raw = spec.get("environment") or {}
    if isinstance(raw, list):
        pairs = [item.split("=", 1) if "=" in item else [item, None] for item in raw]
        raw = dict(pairs)
    if not isinstance(raw, dict):
        raise ComposeError(f"service {name}: environment is neither a list nor a mapping")
    # A bare key (no value) takes the host's value in compose; a local run has none to take.
    return {str(key): _scalar(value) for key, value in raw.items() if value is not None}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _hostnames(services: Mapping[str, Any]) -> set[str]:
    names = set(services)
    for spec in services.values():
        if spec.get("hostname"):
            names.add(str(spec["hostname"]))
        if spec.get("container_name"):
            names.add(str(spec["container_name"]))
    return names


def _map_url(value: str, hostnames: set[str], ports: Mapping[str, int], host: str) -> str:
    if "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.hostname not in hostnames:
        return value
    port = ports.get(parts.hostname, parts.port)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = (f"{userinfo}@" if userinfo else "") + host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _option(args: tuple[str, ...] | list[str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _set_option(args: list[str], flag: str, value: str) -> None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            args[index + 1] = value
            return
        if arg.startswith(flag + "="):
            args[index] = f"{flag}={value}"
            return
    args.extend([flag, value])

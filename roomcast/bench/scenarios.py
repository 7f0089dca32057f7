"""Named scenarios and the plan of clients they make: who connects to which gateway, joins
which room, and writes or only reads. Pure: no I/O, so the plan is tested on its own.

Each preset fixes a room size and how many writers a room has; `--clients` scales the number
of rooms with it unless `--rooms` is given too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Mode = Literal["chat", "joins", "idle", "reconnect"]
Role = Literal["sender", "reader", "loader"]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    mode: Mode
    clients: int
    gateways: int
    room_size: int
    senders_per_room: int | None  # None: every client writes
    rate: float  # messages per second in total; 0: as fast as acknowledgements allow
    duration: float
    history: int = 0  # messages posted to each room before the measured phase


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "fanout",
            "rooms of 100, many readers, few writers (2 per room)",
            "chat",
            clients=1000,
            gateways=2,
            room_size=100,
            senders_per_room=2,
            rate=100.0,
            duration=10.0,
        ),
        Preset(
            "chatty",
            "many small rooms (10), everyone writes",
            "chat",
            clients=1000,
            gateways=2,
            room_size=10,
            senders_per_room=None,
            rate=300.0,
            duration=10.0,
        ),
        Preset(
            "join-storm",
            "thousands of joins at once to rooms of 100 that have history",
            "joins",
            clients=2000,
            gateways=2,
            room_size=100,
            senders_per_room=0,
            rate=0.0,
            duration=60.0,
            history=100,
        ),
        Preset(
            "idle",
            "many idle connections joined to rooms of 10: memory per connection",
            "idle",
            clients=10000,
            gateways=1,
            room_size=10,
            senders_per_room=0,
            rate=0.0,
            duration=10.0,
        ),
        Preset(
            "reconnect-storm",
            "a gateway holding every client is killed; they come back on the others with since",
            "reconnect",
            clients=1000,
            gateways=3,
            room_size=100,
            senders_per_room=0,
            rate=20.0,  # chat messages per second in all, by writers on the other gateways
            duration=60.0,  # how long after the kill a client may take to be recovered
        ),
    )
}


@dataclass(frozen=True)
class Config:
    """One run's resolved parameters (the JSON's "params")."""

    scenario: str
    mode: Mode
    clients: int
    gateways: int
    rooms: int
    senders: int
    rate: float  # total messages (or, in join-storm, joins) per second; 0: as fast as acks allow
    duration: float
    workers: int
    history: int
    batch: bool = True
    window: int = 1  # messages in flight per sender when paced by acknowledgements
    join_window: int = 32  # joins in flight per load-generator process
    connect_window: int = 64  # connection handshakes in flight per load-generator process
    body_chars: int = 64  # chat body length (timestamp included)
    warmup: float = 0.0
    drain: float = 15.0  # at most; a drain ends once deliveries stop (worker.QUIET_S)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve(
    scenario: str,
    *,
    clients: int | None = None,
    gateways: int | None = None,
    rooms: int | None = None,
    senders: int | None = None,
    rate: float | None = None,
    duration: float | None = None,
    workers: int = 2,
    batch: bool = True,
) -> Config:
    """A preset with the command line's overrides applied."""
    preset = PRESETS[scenario]
    c = clients if clients is not None else preset.clients
    if c < 1:
        raise ValueError("--clients must be at least 1")
    r = rooms if rooms is not None else max(1, math.ceil(c / preset.room_size))
    r = max(1, min(r, c))
    if senders is None:
        per_room = preset.senders_per_room
        s = c if per_room is None else min(c, per_room * r)
    else:
        s = max(0, min(senders, c))
    if preset.mode == "chat" and s == 0:
        raise ValueError("a chat scenario needs at least one sender")
    d = duration if duration is not None else preset.duration
    if d <= 0:
        raise ValueError("--duration must be positive")
    g = gateways if gateways is not None else preset.gateways
    if g < 1:
        raise ValueError("--gateways must be at least 1")
    w = max(1, min(workers, c))
    return Config(
        scenario=scenario,
        mode=preset.mode,
        clients=c,
        gateways=g,
        rooms=r,
        senders=s if preset.mode == "chat" else 0,
        rate=float(rate if rate is not None else preset.rate),
        duration=float(d),
        workers=w,
        history=preset.history,
        batch=batch,
        warmup=round(min(1.0, 0.2 * d), 3) if preset.mode == "chat" else 0.0,
        drain=15.0 if preset.mode == "chat" else 0.0,
    )


@dataclass(frozen=True)
class ClientSpec:
    index: int
    gateway: int
    url: str
    username: str
    room: str
    role: Role


@dataclass
class Plan:
    clients: list[ClientSpec]
    loaders: list[ClientSpec] = field(default_factory=list)

    def room_sizes(self) -> dict[str, int]:
        """Members of each room during the measured phase (loaders excluded)."""
        sizes: dict[str, int] = {}
        for c in self.clients:
            sizes[c.room] = sizes.get(c.room, 0) + 1
        return sizes

    def for_worker(self, worker: int, workers: int) -> list[ClientSpec]:
        return [c for c in self.clients if worker_of(c.index, self._rooms, workers) == worker]

    @property
    def _rooms(self) -> int:
        return len({c.room for c in self.clients}) or 1


def worker_of(index: int, rooms: int, workers: int) -> int:
    """Which load-generator process drives client `index`: a room's members alternate."""
    return (index // rooms) % workers


def room_name(run_id: str, room: int) -> str:
    return f"bench-{run_id}-{room}"


def username(run_id: str, index: int) -> str:
    return f"b{run_id}-{index}"


def loader_name(run_id: str, room: int) -> str:
    """A name no client's can be confused with: presence compares names by their TR39 skeleton
    (PROTOCOL.md 2.2), where `L0` and `10` are the same name (username_taken)."""
    return f"h{run_id}-{room}"


def build_plan(config: Config, urls: list[str], run_id: str) -> Plan:
    """Client i is in room i mod R, on gateway (i div R) mod G (so every room has members
    on every gateway), and writes when i < S (the first writers of each room come first,
    spread over the gateways). Join-storm adds one loader per room that posts its history."""
    if not urls:
        raise ValueError("no gateway to connect to")
    rooms, gateways = config.rooms, len(urls)
    clients = []
    for i in range(config.clients):
        room = i % rooms
        gateway = (i // rooms) % gateways
        role: Role = "sender" if i < config.senders else "reader"
        clients.append(
            ClientSpec(
                i, gateway, urls[gateway], username(run_id, i), room_name(run_id, room), role
            )
        )
    loaders = []
    if config.history > 0:
        for room in range(rooms):
            gateway = room % gateways
            loaders.append(
                ClientSpec(
                    -1 - room,
                    gateway,
                    urls[gateway],
                    loader_name(run_id, room),
                    room_name(run_id, room),
                    "loader",
                )
            )
    return Plan(clients, loaders)


def with_overrides(config: Config, **changes: Any) -> Config:
    return replace(config, **changes)

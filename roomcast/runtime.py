"""Assembling and running roomcast's services: one function per command of the CLI.

Each builds its bus and stores from `Settings`, serves its HTTP port with Hypercorn, and shuts
down in order on SIGINT/SIGTERM: a gateway first closes its sockets with 1012 and leaves
presence (Hypercorn's own graceful timeout is ignored while WebSockets stay open: hypercorn
issue 308), history finishes the writes in flight before it acknowledges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

from roomcast.gateway import appqueue, slimconn
from roomcast.gateway.app import create_app
from roomcast.gateway.compression import set_websocket_compression
from roomcast.gateway.gateway import ChatGateway
from roomcast.gateway.pings import enable_pings
from roomcast.history.service import HistoryService
from roomcast.presence.service import PresenceService
from roomcast.shared import gcpauses
from roomcast.shared.bus import Bus, InMemoryBus
from roomcast.shared.config import ConfigError, Settings, read_secret
from roomcast.shared.ops import Check, add_ops_routes
from roomcast.shared.sessions import SessionSigner
from roomcast.shared.store.base import MessageStore, RoomStore
from roomcast.shared.store.mongo import MongoMessageStore, MongoRoomStore
from roomcast.webhooks.emitter import emitter_for
from roomcast.webhooks.sender import WebhookSender, webhook_target

log = structlog.get_logger("roomcast")


def rabbit_bus(settings: Settings, name: str) -> Bus:
    from roomcast.shared.bus.rabbit import RabbitBus

    return RabbitBus(
        settings.amqp_url.get_secret_value(),
        exchange=settings.exchange,
        name=f"roomcast-{name}",
        inbox_limit=settings.bus_inbox_limit,
    )


def _hypercorn(host: str, port: int, settings: Settings) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    # Hypercorn counts characters and mishandles an oversized fragmented message (it keeps the
    # socket half-closed), so it only stops what no UTF-8 frame within our limit can reach; the
    # gateway checks the limit itself, in bytes, and closes with 1009.
    config.websocket_max_message_size = settings.max_frame_bytes * 4 + 4096
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    config.include_server_header = False
    # pings, and a deadline on their pongs that Hypercorn lacks (roomcast.gateway.pings)
    enable_pings(config, settings.ping_interval, settings.ping_timeout)
    appqueue.install()  # a lighter queue per socket than Hypercorn's (idle memory)
    slimconn.install()  # and lighter events
    return config


async def _serve(
    app: Quart,
    host: str,
    port: int,
    settings: Settings,
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; run `before_stop` while the port still answers."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    shutdown = asyncio.Event()

    async def watch() -> None:
        await stop.wait()
        log.info("stopping")
        if before_stop is not None:
            try:
                await before_stop()
            except Exception:
                log.exception("error while draining")
        shutdown.set()

    watcher = asyncio.create_task(watch())
    gcpauses.settle()  # start-up is over: what it made is there to stay
    log.info("listening", url=f"http://{host}:{port}")
    try:
        await serve(app, _hypercorn(host, port, settings), shutdown_trigger=shutdown.wait)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def _gateway_secret(settings: Settings) -> bytes:
    secret = read_secret(settings)
    if secret is None:
        raise ConfigError(
            "ROOMCAST_SECRET: is required for gateways (the same value on every gateway, "
            "at least 16 characters), or ROOMCAST_SECRET_FILE: a file that holds it"
        )
    return secret.get_secret_value().encode()


def _dev_secret(settings: Settings, data_dir: Path) -> bytes:
    """Sessions must survive a restart of `roomcast dev`: keep a secret in the data dir."""
    secret = read_secret(settings)
    if secret is not None:
        return secret.get_secret_value().encode()
    path = data_dir / "secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip().encode()


def _prepare_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"--data-dir: {data_dir} is not a writable directory ({exc.strerror})"
        ) from None


@dataclass
class Embedded:
    """Every service of roomcast on one in-memory bus, as `roomcast dev` and tests run them."""

    app: Quart
    gateway: ChatGateway
    bus: InMemoryBus
    history: HistoryService
    presence: PresenceService
    webhooks: WebhookSender | None = None


@asynccontextmanager
async def embedded(
    settings: Settings, signer: SessionSigner, messages: MessageStore, rooms: RoomStore
) -> AsyncIterator[Embedded]:
    """Start history, presence and a gateway on an in-memory bus; stop them in reverse."""
    async with AsyncExitStack() as stack:
        for store in (messages, rooms):
            await store.open()
            stack.push_async_callback(store.close)
        bus = InMemoryBus("embedded", inbox_limit=settings.bus_inbox_limit)
        await bus.connect()
        stack.push_async_callback(bus.close)
        # transient on the in-memory bus: a persistent publish there waits for the delivery
        webhooks = emitter_for(bus, settings, persistent=False)
        sender = (
            WebhookSender(bus, settings, hold=None, persistent=False)
            if webhooks is not None
            else None
        )
        if sender is not None:
            await sender.start()
            stack.push_async_callback(sender.stop)
        history = HistoryService(bus, messages, settings, webhooks=webhooks)
        await history.start()
        stack.push_async_callback(history.stop)
        presence = PresenceService(bus, rooms, settings, webhooks=webhooks)
        await presence.start()
        stack.push_async_callback(presence.stop)
        gateway = ChatGateway(bus, settings, signer)
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        app = create_app(gateway, {"store": messages.ping})
        yield Embedded(app, gateway, bus, history, presence, sender)


async def run_dev(settings: Settings, host: str, port: int, data_dir: Path) -> None:
    """Everything in one process: in-memory bus, SecantusDB child process, one gateway."""
    from roomcast.shared.secantus import SecantusServer  # the `dev` extra: not for the services

    _prepare_data_dir(data_dir)
    set_websocket_compression(settings.websocket_compression)
    signer = SessionSigner(_dev_secret(settings, data_dir))
    async with SecantusServer(data_dir / "db") as database:
        messages = MongoMessageStore(database.url, settings.mongo_db)
        rooms = MongoRoomStore(database.url, settings.mongo_db)
        async with embedded(settings, signer, messages, rooms) as system:
            log.info("roomcast dev", data_dir=str(data_dir), web=f"http://{host}:{port}/")
            await _serve(system.app, host, port, settings, system.gateway.drain)


async def run_gateway(settings: Settings, host: str, port: int) -> None:
    set_websocket_compression(settings.websocket_compression)
    signer = SessionSigner(_gateway_secret(settings))
    bus = rabbit_bus(settings, "gateway")
    await bus.connect()
    gateway = ChatGateway(bus, settings, signer)
    try:
        await gateway.start()
        await _serve(create_app(gateway), host, port, settings, gateway.drain)
    finally:
        await gateway.stop()
        await bus.close()


class _Worker(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class _Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...


async def _run_worker(
    name: str,
    settings: Settings,
    host: str,
    port: int,
    store: _Store | None,
    build: Callable[[Bus], _Worker],
    checks: Callable[[_Worker], dict[str, Check]] | None = None,
) -> None:
    """A service with no public API: its bus consumer, and /healthz, /readyz, /metrics;
    `checks` adds the service's own readiness checks (its background tasks)."""
    bus = rabbit_bus(settings, name)
    await bus.connect()
    try:
        if store is not None:
            await store.open()
        service = build(bus)
        await service.start()
        app = Quart(f"roomcast-{name}")

        async def bus_ready() -> bool:
            return bus.is_ready

        own = checks(service) if checks is not None else {}
        stored = {"store": store.ping} if store is not None else {}
        add_ops_routes(app, {"bus": bus_ready, **stored, **own})
        await _serve(app, host, port, settings, service.stop)
    finally:
        await bus.close()
        if store is not None:
            await store.close()


async def run_history(settings: Settings, host: str, port: int) -> None:
    store = MongoMessageStore(settings.mongo_url.get_secret_value(), settings.mongo_db)

    def build(bus: Bus) -> HistoryService:
        webhooks = emitter_for(bus, settings, persistent=True)
        return HistoryService(bus, store, settings, webhooks=webhooks)

    await _run_worker("history", settings, host, port, store, build)


async def run_presence(settings: Settings, host: str, port: int) -> None:
    store = MongoRoomStore(settings.mongo_url.get_secret_value(), settings.mongo_db)

    def tasks(service: _Worker) -> dict[str, Check]:
        assert isinstance(service, PresenceService)
        return {"tasks": service.ready_check}

    await _run_worker(
        "presence",
        settings,
        host,
        port,
        store,
        lambda bus: PresenceService(
            bus, store, settings, webhooks=emitter_for(bus, settings, persistent=True)
        ),
        tasks,
    )


async def run_webhooks(settings: Settings, host: str, port: int) -> None:
    """The webhook sender (roomcast.webhooks.sender): it needs no store."""
    webhook_target(settings)  # a missing URL or secret stops it before it connects

    def ready(service: _Worker) -> dict[str, Check]:
        assert isinstance(service, WebhookSender)
        return {"sender": service.ready}

    await _run_worker(
        "webhooks", settings, host, port, None, lambda bus: WebhookSender(bus, settings), ready
    )


def run(main: Awaitable[None]) -> None:
    """Run on uvloop where it is installed, with the collector's pauses timed (gcpauses)."""
    gcpauses.watch()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-Linux
        asyncio.run(main)  # type: ignore[arg-type]
        return
    uvloop.run(main)  # type: ignore[arg-type]

"""The `roomcast` command: `dev` (everything in one process) and one command per service.

Any bad flag, setting or environment variable stops the process before it starts, with one line
that names it and says what is wrong.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import click

from roomcast.shared.config import ConfigError, Settings, load_settings
from roomcast.shared.logging import configure_logging

PORT = click.IntRange(0, 65535)


def _settings(**defaults: Any) -> Settings:
    """Settings from the environment; `defaults` apply where the environment says nothing."""
    overrides = {k: v for k, v in defaults.items() if f"ROOMCAST_{k.upper()}" not in os.environ}
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _run(coro: Awaitable[None]) -> None:
    from roomcast.runtime import run

    run(coro)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="roomcast")
def cli() -> None:
    """roomcast: a real-time chat backend that scales out over RabbitMQ."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=PORT, default=8000, show_default=True, help="HTTP/WebSocket port.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".roomcast"),
    show_default=True,
    help="Where history and the session secret are kept.",
)
def dev(host: str, port: int, data_dir: Path) -> None:
    """Gateway, history and presence in one process, no servers needed."""
    from roomcast.shared.secantus import INSTALL_HINT, installed

    if not installed():
        click.echo(
            f"roomcast: error: roomcast dev needs SecantusDB, the dev extra: {INSTALL_HINT}",
            err=True,
        )
        sys.exit(1)
    from roomcast.runtime import run_dev

    # on a laptop's terminal, logs for people; JSON when piped or set explicitly
    log_format = "console" if sys.stderr.isatty() else "json"
    _run(run_dev(_settings(log_format=log_format), host, port, data_dir))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=PORT, default=8000, show_default=True)
def gateway(host: str, port: int) -> None:
    """A gateway: clients' WebSockets and the HTTP API, on RabbitMQ."""
    from roomcast.runtime import run_gateway

    _run(run_gateway(_settings(), host, port))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=PORT, default=8001, show_default=True, help="Health and metrics port.")
def history(host: str, port: int) -> None:
    """The history service: stores messages in MongoDB and answers history reads."""
    from roomcast.runtime import run_history

    _run(run_history(_settings(), host, port))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=PORT, default=8002, show_default=True, help="Health and metrics port.")
def presence(host: str, port: int) -> None:
    """The presence service: who is where, invitations and private rooms."""
    from roomcast.runtime import run_presence

    _run(run_presence(_settings(), host, port))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=PORT, default=8003, show_default=True, help="Health and metrics port.")
def webhooks(host: str, port: int) -> None:
    """The webhook sender: POSTs room and message events to ROOMCAST_WEBHOOK_URL, signed."""
    from roomcast.runtime import run_webhooks

    _run(run_webhooks(_settings(), host, port))


@cli.command()
@click.argument(
    "scenario",
    type=click.Choice(
        ["fanout", "chatty", "join-storm", "idle", "chaos", "reconnect-storm", "goals"]
    ),
)
@click.option("--vs", type=click.Choice(["socketio"]), help="Also run the python-socketio peer.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS")
@click.option("--clients", type=click.IntRange(min=1), metavar="C")
@click.option("--gateways", type=click.IntRange(min=1), metavar="G")
@click.option("--rooms", type=click.IntRange(min=1), metavar="R")
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    metavar="MSGS_PER_S",
    help="Messages per second in all (join-storm: joins); 0: as fast as acks allow.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", metavar="URL[,URL...]", help="Gateways of a running deployment.")
@click.option("--senders", type=click.IntRange(min=0), metavar="S")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--peer-deflate", is_flag=True, help="Keep the peer's permessage-deflate on.")
@click.option("--batch/--no-batch", default=True, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option(
    "--faults",
    metavar="KIND[,KIND...]",
    help="chaos: gateway, history, presence, broker (default: all four, in turn); a+b: at once.",
)
@click.option(
    "--down",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="chaos: how long each fault lasts before the restart (default 0: at once).",
)
@click.option("--sweep", is_flag=True, help="Step the rate up until p99 passes --limit.")
@click.option(
    "--limit",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    metavar="MS",
    help="--sweep: the p99 limit.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="--sweep: measurements per system, at most.",
)
@click.option(
    "--profile",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="py-spy every server process during the measured phase; folded stacks and a summary"
    " go to DIR (py-spy costs CPU: compare figures of runs without it).",
)
def bench(scenario: str, **options: Any) -> None:
    """Measure fan-out, latency, joins and memory (docs/performance.md), or chat through
    faults and audit what was lost (`chaos`, docs/reliability.md); `goals` runs issue 11's
    four targets and judges each."""
    from roomcast.bench import INSTALL_HINT, missing_dependencies

    missing = missing_dependencies()
    if missing:
        click.echo(
            f"roomcast: error: roomcast bench needs the bench extra (missing {', '.join(missing)}):"
            f" {INSTALL_HINT}",
            err=True,
        )
        sys.exit(1)
    from roomcast.bench import goals
    from roomcast.bench.runner import BenchError, Options, run

    try:
        (goals.run if scenario == "goals" else run)(Options(scenario=scenario, **options))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except BenchError as exc:
        click.echo(f"roomcast: error: {exc}", err=True)
        sys.exit(1)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: one-line errors for bad flags and settings, exit status 2."""
    try:
        return cli.main(args=argv, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        click.echo(f"roomcast: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except ConfigError as exc:
        click.echo(f"roomcast: error: {exc}", err=True)
        sys.exit(2)
    except click.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)

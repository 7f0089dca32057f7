"""What `pip install roomcast` gives an operator, proven from a clean venv (issue 14).

One venv per session, built by scripts/check-licenses.py's own `runtime_venv` (a copy of the
sources, then a plain `pip install` with no extras; pip's cache keeps it to a minute or so). In it:
no SecantusDB and no bench dependency; the licence check passes; `roomcast gateway`, `history`
and `presence` reach /readyz against the machine's RabbitMQ and a SecantusDB (a MongoDB wire
server, started with this test venv's own `secantus`); `roomcast dev` and `roomcast bench` say
in one line which extra to install.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from roomcast.shared.secantus import SecantusServer
from tests.servers.rabbitmq import machine_broker_url
from tests.support.cluster import SECRET, ServiceProcess, delete_topology
from tests.support.ports import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DEV_AND_BENCH = {"secantusdb", "psutil", "rich", "matplotlib", "python-socketio", "uvicorn"}


def _check_licenses() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_licenses", ROOT / "scripts" / "check-licenses.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check_licenses = _check_licenses()


@pytest.fixture(scope="session")
def runtime_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The python of a fresh venv holding `pip install roomcast` and nothing else."""
    python: Path = check_licenses.runtime_venv(tmp_path_factory.mktemp("runtime-install"), ROOT)
    yield python


def clean_env(**roomcast: str) -> dict[str, str]:
    """The environment without anything that could lead the venv back to the work tree."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ROOMCAST_") and k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    }
    return {**env, **{f"ROOMCAST_{k.upper()}": v for k, v in roomcast.items()}}


def run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=clean_env(),
        check=False,
    )


class VenvService(ServiceProcess):
    """`python -m roomcast KIND --port P` with the clean venv's python."""

    def __init__(self, python: Path, kind: str, port: int, env: dict[str, str], log: Path):
        super().__init__(kind, port, env, log)
        self.python = python

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(self.python), "-m", "roomcast", self.kind, "--port", str(self.port)],
                env=self._env,
                cwd=self.log.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
            )


def test_runtime_install_holds_no_dev_or_bench_dependency(
    runtime_python: Path, tmp_path: Path
) -> None:
    installed = check_licenses.installed(runtime_python)
    names = {str(d["name"]).lower() for d in installed}
    assert "roomcast" in names
    assert names & DEV_AND_BENCH == set()
    assert check_licenses.report(check_licenses.classify(installed)) == 0
    # the roomcast it runs is the installed copy, not the work tree
    where = run(runtime_python, "-c", "import roomcast; print(roomcast.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(runtime_python.parents[1])), where.stdout


def test_the_services_import_neither_the_bench_nor_secantus(
    runtime_python: Path, tmp_path: Path
) -> None:
    probe = (
        "import sys, roomcast.cli, roomcast.runtime\n"
        "import roomcast.gateway.app, roomcast.history.service, roomcast.presence.service\n"
        "loaded = [m for m in sys.modules if m.startswith(('roomcast.bench', "
        "'roomcast.shared.secantus', 'secantus', 'psutil', 'rich', 'matplotlib'))]\n"
        "print(loaded)\n"
    )
    result = run(runtime_python, "-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["dev", "--port", "0"], "pip install 'roomcast[dev]'"),
        (["bench", "fanout"], "pip install 'roomcast[bench]'"),
    ],
    ids=["dev", "bench"],
)
def test_commands_of_an_extra_say_in_one_line_how_to_install_it(
    runtime_python: Path, tmp_path: Path, args: list[str], hint: str
) -> None:
    result = run(runtime_python, "-m", "roomcast", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("roomcast: error:") and hint in lines[0]
    assert not (tmp_path / ".roomcast").exists()  # dev stopped before touching its data dir


async def test_gateway_history_presence_start_from_the_runtime_install(
    runtime_python: Path, tmp_path: Path
) -> None:
    amqp = machine_broker_url()
    exchange = f"test-install-{uuid.uuid4().hex[:8]}"
    services: list[VenvService] = []
    async with SecantusServer(tmp_path / "db") as database:
        env = clean_env(
            amqp_url=amqp,
            mongo_url=database.url,
            mongo_db=f"db_{uuid.uuid4().hex[:10]}",
            exchange=exchange,
            secret=SECRET,
            log_format="console",
        )
        try:
            for kind in ("history", "presence", "gateway"):
                port = free_port()
                service = VenvService(runtime_python, kind, port, env, tmp_path / f"{kind}.log")
                service.start()
                services.append(service)
            for service in services:
                try:
                    await service.ready(timeout=90)
                except (RuntimeError, TimeoutError) as exc:
                    raise AssertionError(f"{service.kind}: {exc}\n{service.tail()}") from exc
            for service in services:
                assert await service.stop() == 0, service.tail()
        finally:
            for service in services:
                await service.stop()
            await delete_topology(amqp, exchange)

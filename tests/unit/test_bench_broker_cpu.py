"""The bench's broker CPU (roomcast/bench/deploy.py): a process that ends during a run is left
out instead of counting its whole past as negative CPU (other tests' private RabbitMQ nodes
stopping mid-run made `broker_cpu_s` come out at -4 s), and the broker measured is the node on
the bench's AMQP port."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from roomcast.bench.deploy import Monitor, broker_pids, cpu_delta

pytestmark = pytest.mark.unit


def test_a_process_that_ended_is_left_out_of_the_delta() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sum(range(3_000_000)); sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    try:
        monitor = Monitor({"broker": [child.pid]})
        before = monitor.cpu()
        assert before[child.pid] >= 0.0
    finally:
        child.communicate(b"")
    after = monitor.cpu()
    assert child.pid not in after
    assert cpu_delta(before, after) == 0.0


def test_the_delta_sums_what_the_processes_present_at_both_readings_used() -> None:
    assert cpu_delta({1: 1.0, 2: 5.0, 3: 2.0}, {1: 1.5, 2: 4.0, 4: 9.0}) == 0.5


def test_only_nodes_listening_on_the_port_are_the_broker_when_one_is() -> None:
    every = broker_pids()
    on_port = broker_pids(5672)
    assert set(on_port) <= set(every)
    for pid in on_port if len(on_port) < len(every) else []:
        conns = psutil.Process(pid).net_connections(kind="tcp")
        assert any(c.status == psutil.CONN_LISTEN and c.laddr.port == 5672 for c in conns)

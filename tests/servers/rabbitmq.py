"""RabbitMQ for the tests.

`machine_broker_url()` is the machine's broker on 127.0.0.1:5672, which the test command makes sure
of (scripts/ensure-rabbitmq.sh); the tests never skip for want of it, and never stop or restart it.

`PrivateRabbitNode` is a throw-away node of its own for tests that restart the broker. It lives in
the package (`roomcast.bench.rabbitnode`), since `roomcast bench chaos` restarts one too.
"""

from __future__ import annotations

from roomcast.bench.rabbitnode import PrivateRabbitNode, free_port, port_answers

MACHINE_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"

__all__ = [
    "MACHINE_BROKER_URL",
    "PrivateRabbitNode",
    "free_port",
    "machine_broker_url",
    "port_answers",
]


def machine_broker_url() -> str:
    """The machine's broker, after checking it answers (it is a precondition, not optional)."""
    if not port_answers(5672):
        raise RuntimeError(
            "No RabbitMQ answers on 127.0.0.1:5672. The test command starts it: run "
            "scripts/ensure-rabbitmq.sh (it installs Debian's rabbitmq-server if needed)."
        )
    return MACHINE_BROKER_URL

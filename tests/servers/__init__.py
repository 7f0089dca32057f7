"""Servers the tests talk to: the machine's RabbitMQ, and private nodes a test may restart."""

from __future__ import annotations

from .rabbitmq import MACHINE_BROKER_URL, PrivateRabbitNode, machine_broker_url, port_answers

__all__ = ["MACHINE_BROKER_URL", "PrivateRabbitNode", "machine_broker_url", "port_answers"]

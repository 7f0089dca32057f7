"""The faults of `roomcast bench chaos`, and when they happen.

- `gateway`: SIGKILL one gateway (they take turns), then start it again on the same port. Its
  clients lose their sockets and reconnect to any gateway that answers.
- `history`: SIGKILL the history service, then start it again. Messages posted meanwhile wait
  in its durable queue; joins come back without history (protocol 2.2) or time out.
- `presence`: SIGKILL the presence service, then start it again; it rebuilds who is where from
  the gateways' heartbeats. Joins are refused `unavailable` meanwhile.
- `broker`: `rabbitmqctl stop_app` then `start_app` on the private node: every connection to
  the broker drops, and every service must re-declare what it had.

Each kill is followed at once by the restart, as a supervisor would do; what the bench measures
is how long until chat works again from the moment the fault began.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .chaosstack import ChaosStack
from .deploy import Service

KINDS = ("gateway", "history", "presence", "broker")


def parse_kinds(text: str | None) -> list[str]:
    """`--faults gateway,broker` (default: all four, in the order above)."""
    if text is None or not text.strip():
        return list(KINDS)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"--faults: unknown fault {unknown[0]!r} (known: {', '.join(KINDS)})")
    return kinds


def schedule(duration: float, count: int, warmup: float) -> list[float]:
    """When each fault starts (seconds into the run): spread evenly after a warm-up, the
    last one leaving as long to recover as the others had."""
    if count == 0:
        return []
    period = max(0.0, duration - warmup) / count
    return [round(warmup + i * period, 2) for i in range(count)]


@dataclass
class Injected:
    target: str
    down_s: float  # from the fault's start until the process (or broker) was started again
    service: Service | None = None  # the process started again (None: the broker)


async def inject(kind: str, stack: ChaosStack, turn: int) -> Injected:
    """Cause the fault and start what it stopped again; return once it has been restarted."""
    start = time.monotonic()
    if kind == "broker":
        await stack.restart_broker()
        return Injected(f"rabbitmq {stack.node.nodename}", time.monotonic() - start)
    gateways = stack.gateways
    service = gateways[turn % len(gateways)] if kind == "gateway" else stack.role(kind)
    target = f"{kind} :{service.port}"
    await stack.kill(service)
    service.start()
    return Injected(target, time.monotonic() - start, service)

"""The faults of `roomcast bench chaos`, and when they happen.

- `gateway`: SIGKILL one gateway (they take turns), then start it again on the same port. Its
  clients lose their sockets and reconnect to any gateway that answers.
- `history`: SIGKILL the history service, then start it again. Messages posted meanwhile wait
  in its durable queue; joins come back without history (protocol 2.2) or time out.
- `presence`: SIGKILL the presence service, then start it again; it rebuilds who is where from
  the gateways' heartbeats. Joins are refused `unavailable` meanwhile.
- `broker`: `rabbitmqctl stop_app` then `start_app` on the private node: every connection to
  the broker drops, and every service must re-declare what it had.

Each kill is followed at once by the restart, as a supervisor would do (or after `--down`
seconds); what the bench measures is how long until chat works again from the moment the fault
began. `a+b` causes two faults at once, e.g. `history+gateway --down 10`: clients of the killed
gateway reconnect and re-join while history is away.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .chaosstack import ChaosStack
from .deploy import Service

KINDS = ("gateway", "history", "presence", "broker")


def parse_kinds(text: str | None) -> list[str]:
    """`--faults gateway,broker` (default: all four, in the order above). `history+gateway` is
    one fault of two parts at once."""
    if text is None or not text.strip():
        return list(KINDS)
    faults = [k.strip() for k in text.split(",") if k.strip()]
    for fault in faults:
        for part in fault.split("+"):
            if part not in KINDS:
                known = ", ".join(KINDS)
                raise ValueError(f"--faults: unknown fault {part!r} (known: {known}, or a+b)")
    return faults


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
    down_s: float  # from the fault's start until everything was started again
    services: list[Service] = field(default_factory=list)  # the processes started again


async def inject(fault: str, stack: ChaosStack, turn: int, down: float = 0.0) -> Injected:
    """Cause the fault (every part of `a+b` at once), keep it `down` seconds, and start what it
    stopped again; return once everything has been started again."""
    start = time.monotonic()
    parts = fault.split("+")
    targets: list[str] = []
    services: list[Service] = []
    for part in parts:
        if part == "broker":
            targets.append(f"rabbitmq {stack.node.nodename}")
            continue
        gateways = stack.gateways
        service = gateways[turn % len(gateways)] if part == "gateway" else stack.role(part)
        targets.append(f"{part} :{service.port}")
        services.append(service)
    broker = "broker" in parts
    stopping = [stack.kill(s) for s in services]
    if broker:
        stopping.append(asyncio.to_thread(stack.node.stop_app))
    await asyncio.gather(*stopping)
    if down > 0:
        await asyncio.sleep(down)
    for service in services:
        service.start()
    if broker:
        await asyncio.to_thread(stack.node.start_app)
    return Injected(" + ".join(targets), time.monotonic() - start, services)

"""Health, readiness and metrics routes, the same on every service's HTTP port.

`/healthz` says the process lives; `/readyz` runs the service's checks (its broker, its store)
and answers 503 naming the ones that fail; `/metrics` is Prometheus text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Quart, Response

Check = Callable[[], Awaitable[bool]]


def add_ops_routes(app: Quart, checks: dict[str, Check]) -> None:
    """Mount /healthz, /readyz and /metrics on `app`."""

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> tuple[dict[str, object], int]:
        names = list(checks)
        results = await asyncio.gather(*(_safe(checks[n]) for n in names))
        status = dict(zip(names, results, strict=True))
        ok = all(results)
        body: dict[str, object] = {"status": "ready" if ok else "unready", "checks": status}
        return body, 200 if ok else 503

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)


async def _safe(check: Check) -> bool:
    try:
        async with asyncio.timeout(2):
            return await check()
    except Exception:
        return False

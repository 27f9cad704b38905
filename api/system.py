"""System endpoints: liveness and readiness (SPEC §3.4, §3.5)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Response, get

Check = Callable[[], Awaitable[object]]
CHECK_TIMEOUT = 1.0


class Readiness:
    """Runs the readiness checks; turns not-ready at once when shutdown begins."""

    def __init__(self, postgres: Check, redis: Check) -> None:
        self.postgres = postgres
        self.redis = redis
        self.shutting_down = False

    async def report(self) -> tuple[int, dict[str, Any]]:
        pg, rd = await asyncio.gather(_timed(self.postgres), _timed(self.redis))
        checks: dict[str, Any] = {
            "postgres": pg,
            "redis": rd if rd["status"] == "ok" else {**rd, "status": "degraded"},
        }
        if self.shutting_down:
            return 503, {"status": "not_ready", "checks": checks}
        if pg["status"] != "ok":
            return 503, {"status": "not_ready", "checks": checks}
        return 200, {"status": "ready" if rd["status"] == "ok" else "degraded", "checks": checks}


async def _timed(check: Check) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any dependency failure is a failed check, never a 500
        return {"status": "fail", "latency_ms": _ms(started), "error": _short(exc)}
    return {"status": "ok", "latency_ms": _ms(started)}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _short(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


@get("/health", sync_to_thread=False, include_in_schema=True, tags=["system"])
def health() -> dict[str, str]:
    """Liveness only: no dependency is checked."""
    return {"status": "healthy"}


@get("/ready", tags=["system"])
async def ready(readiness: Readiness) -> Response[dict[str, Any]]:
    """Readiness: PostgreSQL (required), Redis (degraded when down)."""
    status, body = await readiness.report()
    return Response(body, status_code=status)

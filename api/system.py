"""System endpoints: liveness and readiness (SPEC §3.4, §3.5)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from litestar import Response, get
from litestar.openapi import ResponseSpec

Check = Callable[[], Awaitable[object]]
Lags = Callable[[], Awaitable[dict[str, float]]]
CHECK_TIMEOUT = 1.0
GATING = ("users", "event_log")  # revocations and forwarder are reported but do not gate readiness


class Readiness:
    """Runs the readiness checks; turns not-ready at once when shutdown begins."""

    def __init__(self, postgres: Check, redis: Check, lags: Lags | None = None, *, max_lag: float = 30.0) -> None:
        self.postgres = postgres
        self.redis = redis
        self.lags = lags
        self.max_lag = max_lag
        self.shutting_down = False

    async def report(self) -> tuple[int, dict[str, Any]]:
        pg, rd, proj = await asyncio.gather(_timed(self.postgres), _timed(self.redis), self._projections())
        checks: dict[str, Any] = {"postgres": pg, "redis": rd if rd["status"] == "ok" else {**rd, "status": "degraded"}}
        if proj is not None:
            checks["projections"] = proj
        failed = pg["status"] != "ok" or (proj is not None and proj["status"] != "ok")
        if self.shutting_down or failed:
            return 503, {"status": "not_ready", "checks": checks}
        return 200, {"status": "ready" if rd["status"] == "ok" else "degraded", "checks": checks}

    async def _projections(self) -> dict[str, Any] | None:
        if self.lags is None:
            return None
        try:
            lags = await asyncio.wait_for(self.lags(), CHECK_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a failed check, never a 500
            return {"status": "fail", "error": _short(exc), "lag_seconds": {}}
        behind = [n for n in GATING if lags.get(n, 0.0) > self.max_lag]
        rounded = {name: round(lag, 3) for name, lag in lags.items()}
        result: dict[str, Any] = {"status": "fail" if behind else "ok", "lag_seconds": rounded}
        if behind:
            result["error"] = f"lagging: {', '.join(behind)}"
        return result


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


class CheckReport(msgspec.Struct):
    status: Literal["ok", "fail", "degraded"]
    latency_ms: float
    error: str | None = None


class ProjectionsReport(msgspec.Struct):
    status: Literal["ok", "fail"]
    lag_seconds: dict[str, float]
    error: str | None = None


class Checks(msgspec.Struct):
    postgres: CheckReport
    redis: CheckReport
    projections: ProjectionsReport | None = None


class ReadinessReport(msgspec.Struct):
    """The body of `/ready` (SPEC §3.5), for the OpenAPI document."""

    status: Literal["ready", "degraded", "not_ready"]
    checks: Checks


@get(
    "/ready",
    tags=["system"],
    responses={
        200: ResponseSpec(ReadinessReport, description="ready (`degraded` when Redis is down)"),
        503: ResponseSpec(
            ReadinessReport, description="`not_ready`: PostgreSQL down, a projection too far behind, or shutting down"
        ),
    },
)
async def ready(readiness: Readiness) -> Response[Any]:
    """Readiness: PostgreSQL (required), Redis (degraded when down), projection lag (SPEC §3.5)."""
    status, body = await readiness.report()
    return Response(body, status_code=status)

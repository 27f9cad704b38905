"""`grpc.health.v1` (SPEC §5.2): services "" and `pandora.user.v1.UserService` are SERVING while PostgreSQL
answers, NOT_SERVING while it does not and from the start of shutdown. Watchers are told of every change.

A monitor pings PostgreSQL every `interval` seconds and watches the process's shutdown flag, so the status
turns NOT_SERVING as soon as shutdown begins, even before the gRPC listener itself is closed. When the
listener closes, open `Watch` streams end with UNAVAILABLE (grpclib would cancel them without a status,
leaving the client waiting on an open connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.check import CheckBase, ServiceStatus
from grpclib.health.service import OVERALL, Health
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Stream
from loguru import logger

from pandora_users.infra.read_pool import DATABASE_OUTAGES

PING_TIMEOUT = 2.0


class _Health(Health):
    """grpclib's Health, whose Watch streams end with UNAVAILABLE once `closed` is set."""

    def __init__(self, checks: dict[object, list[CheckBase]], closed: asyncio.Event) -> None:
        super().__init__(checks)  # type: ignore[arg-type]
        self._closed = closed
        self.watching: set[asyncio.Task[None]] = set()  # the handlers' tasks, whose trailers close awaits

    async def Watch(self, stream: Stream[HealthCheckRequest, HealthCheckResponse]) -> None:  # noqa: N802
        watch = asyncio.ensure_future(super().Watch(stream))
        closed = asyncio.ensure_future(self._closed.wait())
        task = asyncio.current_task()
        if task is not None:
            self.watching.add(task)
            task.add_done_callback(self.watching.discard)
        try:
            await asyncio.wait({watch, closed}, return_when=asyncio.FIRST_COMPLETED)
            if watch.done():
                return watch.result()
        finally:
            watch.cancel()
            closed.cancel()
        raise GRPCError(Status.UNAVAILABLE, "the server is shutting down")


class HealthMonitor:
    def __init__(
        self,
        ping: Callable[[], Awaitable[object]],
        shutting_down: Callable[[], bool],
        *,
        interval: float = 1.0,
    ) -> None:
        self.status = ServiceStatus()
        self._ping = ping
        self._shutting_down = shutting_down
        self.on_shutdown: Callable[[], None] = lambda: None  # set by the server: end streams, refuse calls
        self._interval = interval
        self._stopped = False
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._health: _Health | None = None

    def service(self, user_service: object) -> Health:
        self._health = _Health({OVERALL: [self.status], user_service: [self.status]}, self._closed)
        return self._health

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._run(), name="rpc-health")

    def stop(self) -> None:
        """NOT_SERVING from now on."""
        self._stopped = True
        self.status.set(False)

    async def close(self) -> None:
        """NOT_SERVING, and every Watch stream ends."""
        self.stop()
        self._closed.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._health is not None and self._health.watching:
            await asyncio.wait(self._health.watching, timeout=1.0)  # their trailers are on the way

    async def check(self) -> bool:
        if self._stopped or self._shutting_down():
            if not self._stopped:
                self.on_shutdown()
            self.stop()
            return False
        try:
            await asyncio.wait_for(self._ping(), PING_TIMEOUT)
            serving = True
        except DATABASE_OUTAGES as exc:  # TimeoutError is an OSError
            if self.status.__status__() is not False:
                logger.warning("gRPC health: PostgreSQL unreachable ({}): NOT_SERVING", type(exc).__name__)
            serving = False
        if serving and self.status.__status__() is False:
            logger.info("gRPC health: PostgreSQL reachable again: SERVING")
        if not self._stopped:
            self.status.set(serving)
        return serving

    async def _run(self) -> None:
        ticks = max(1, round(self._interval / 0.2))
        while not self._stopped:
            for _ in range(ticks):  # the shutdown flag is looked at five times a second
                await asyncio.sleep(self._interval / ticks)
                if self._shutting_down():
                    break
            await self.check()

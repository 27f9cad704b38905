"""Concurrent Redis reads of one process, sent as one MGET per event-loop iteration.

Every authenticated request reads its session's revocation entry and its actor's consistency mark (SPEC §6.6,
§2.10): one MGET each. Under load, dozens of requests of one process ask in the same loop iteration; redis-py
spends more CPU per command (connection checkout, retry wrapper, observability hooks) than Redis does, so the
keys asked for in one iteration go out as one MGET, and each caller gets its own values back. A failure reaches
every caller of that MGET; a caller that left is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

Waiter = tuple[Sequence[str], "asyncio.Future[list[Any]]"]


class CoalescedReads:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pending: list[Waiter] = []
        self._scheduled_on: asyncio.AbstractEventLoop | None = None  # the loop the next MGET is scheduled on
        self._sending: set[asyncio.Task[None]] = set()
        self.sent = 0  # MGETs sent (for tests and curiosity)

    async def mget(self, *keys: str) -> list[Any]:
        """The values of `keys` (None where absent), read with the other keys asked for in this iteration."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if self._scheduled_on is not loop:  # none scheduled, or only on a loop that closed before sending it
            self._scheduled_on = loop
            loop.call_soon(self._send_pending, loop)
        self._pending.append((keys, future))
        return await future

    def _send_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled_on = None
        # Callers on a loop that has closed since are gone: their futures can no longer be resolved.
        batch = [(keys, future) for keys, future in self._pending if future.get_loop() is loop]
        self._pending = []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)  # a reference until done: the loop keeps only weak ones
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Waiter]) -> None:
        self.sent += 1
        try:
            values = await self.redis.mget([key for keys, _ in batch for key in keys])
        except Exception as exc:  # noqa: BLE001 - every caller of this MGET gets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:  # the loop is shutting down
            for _, future in batch:
                future.cancel()
            raise
        offset = 0
        for keys, future in batch:
            if not future.done():
                future.set_result(values[offset : offset + len(keys)])
            offset += len(keys)

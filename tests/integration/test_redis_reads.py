"""CoalescedReads on real Redis: the keys asked for in one event-loop iteration go out as one MGET, each caller
gets its own values, a failure reaches every caller of that MGET, and a caller that left changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from pandora_users.infra.redis_reads import CoalescedReads
from tests.e2e.procs import free_port


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def keys(redis: aioredis.Redis) -> AsyncIterator[list[str]]:
    prefix = f"test-reads-{uuid.uuid4().hex[:10]}:"
    names = [f"{prefix}{i}" for i in range(100)]
    await redis.mset({name: str(i) for i, name in enumerate(names) if i % 3})  # every third key is absent
    yield names
    await redis.delete(*names)


def expected(names: list[str], i: int) -> bytes | None:
    return str(i).encode() if i % 3 else None


async def test_callers_of_one_iteration_share_one_mget_and_get_their_own_values(
    redis: aioredis.Redis, keys: list[str]
) -> None:
    reads = CoalescedReads(redis)
    pairs = [(i, (i * 7 + 1) % 100) for i in range(50)]
    results = await asyncio.gather(*(reads.mget(keys[a], keys[b]) for a, b in pairs))
    assert results == [[expected(keys, a), expected(keys, b)] for a, b in pairs]
    assert reads.sent == 1
    assert await reads.mget(keys[1]) == [b"1"]
    assert await reads.mget(keys[3]) == [None]
    assert reads.sent == 3  # one after the other: one MGET each


async def test_a_failure_reaches_every_caller_of_that_mget() -> None:
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        reads = CoalescedReads(dead)
        outcomes = await asyncio.gather(*(reads.mget(f"k{i}") for i in range(10)), return_exceptions=True)
        assert all(isinstance(o, RedisConnectionError) for o in outcomes), outcomes
        assert reads.sent == 1
    finally:
        await dead.aclose()


class SlowRedis:
    """Redis whose MGET answers only when the test lets it."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.asked = asyncio.Event()
        self.go = asyncio.Event()

    async def mget(self, keys: Any) -> Any:
        self.asked.set()
        await self.go.wait()
        return await self.redis.mget(keys)


async def test_a_caller_that_left_is_skipped(redis: aioredis.Redis, keys: list[str]) -> None:
    slow = SlowRedis(redis)
    reads = CoalescedReads(slow)  # type: ignore[arg-type]
    callers = [asyncio.create_task(reads.mget(keys[i])) for i in (1, 2, 4)]
    await slow.asked.wait()
    callers[1].cancel()
    slow.go.set()
    assert await callers[0] == [b"1"] and await callers[2] == [b"4"]
    with pytest.raises(asyncio.CancelledError):
        await callers[1]
    assert reads.sent == 1


def test_reads_left_pending_by_a_closed_loop_do_not_hold_up_the_next_loop(redis_url: str, keys: list[str]) -> None:
    """One process, one loop in production; but a loop closed with a read pending (its MGET never sent) must not
    leave the reads of a later loop waiting for it."""
    first = asyncio.new_event_loop()
    reads = CoalescedReads(aioredis.Redis.from_url(redis_url))
    left: list[asyncio.Task[list[Any]]] = []

    async def begin() -> None:
        left.append(asyncio.ensure_future(reads.mget(keys[1])))  # its MGET would go out after this iteration

    first.run_until_complete(begin())
    first.close()
    assert reads._pending  # the precondition: a read left behind by the closed loop

    async def later() -> list[Any]:
        reads.redis = aioredis.Redis.from_url(redis_url)  # the first client's connections belong to the closed loop
        try:
            return await asyncio.wait_for(reads.mget(keys[1], keys[2]), 5)
        finally:
            await reads.redis.aclose()

    assert asyncio.run(later()) == [b"1", b"2"]
    left[0]._log_destroy_pending = False  # type: ignore[attr-defined]  # it can never finish: its loop is gone

"""Sliding-window rate limits on real Redis (SPEC §7.4), and the in-memory fallback when Redis is down."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from loguru import logger
from redis.asyncio import Redis

from api.ratelimit import Limit, RateLimiter
from pandora_users.infra.embedded import EmbeddedValkey


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def limiter(redis: Redis, prefix: str) -> RateLimiter:
    return RateLimiter(redis, prefix)


@pytest.fixture
def private_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A Valkey of our own, which a test may stop (never the shared one)."""
    server = EmbeddedValkey(tmp_path)
    server.start()
    yield server
    server.stop()


def lim(name: str, key: str, limit: int, window: float, fallback: bool = False) -> Limit:
    return Limit(name=name, key=key, limit=limit, window=window, fallback=fallback)


async def test_allows_the_limit_then_refuses_with_headers(limiter: RateLimiter) -> None:
    limit = lim("login-ip", "203.0.113.7", 3, 60)
    before = time.time()
    decisions = [await limiter.hit([limit]) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, True]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    first_reset = decisions[0].reset
    assert before + 59 <= first_reset <= time.time() + 61
    assert decisions[2].headers() == {
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(first_reset),
    }

    refused = await limiter.hit([limit])
    assert not refused.allowed and refused.refused_by == "login-ip"
    assert 55 <= refused.retry_after <= 60
    assert refused.reset == first_reset
    headers = refused.headers()
    assert headers["Retry-After"] == str(refused.retry_after)
    assert headers["X-RateLimit-Remaining"] == "0" and headers["X-RateLimit-Limit"] == "3"


async def test_refused_requests_do_not_count(limiter: RateLimiter, redis: Redis) -> None:
    limit = lim("ip", "198.51.100.1", 2, 1.5)
    assert (await limiter.hit([limit])).allowed and (await limiter.hit([limit])).allowed
    await asyncio.sleep(0.6)
    for _ in range(5):
        assert not (await limiter.hit([limit])).allowed
    assert await redis.zcard(limiter.key(limit)) == 2
    await asyncio.sleep(1.0)  # the two counted requests have left; the refused ones never entered
    again = await limiter.hit([limit])
    assert again.allowed and again.remaining == 1


async def test_one_exhausted_limit_refuses_without_counting_the_others(limiter: RateLimiter, redis: Redis) -> None:
    ip, login_ip, email = (
        lim("ip", "10.0.0.1", 100, 60),
        lim("login-ip", "10.0.0.1", 5, 60),
        lim("login-email", "alice@example.com", 1, 60),
    )
    first = await limiter.hit([ip, login_ip, email])
    assert first.allowed and first.limit == 1 and first.remaining == 0  # the most restrictive describes it
    second = await limiter.hit([ip, login_ip, email])
    assert not second.allowed and second.refused_by == "login-email" and second.limit == 1
    assert await redis.zcard(limiter.key(ip)) == 1
    assert await redis.zcard(limiter.key(login_ip)) == 1
    other_email = await limiter.hit([ip, login_ip, lim("login-email", "bob@example.com", 2, 60)])
    assert other_email.allowed and other_email.limit == 2 and other_email.remaining == 1
    assert await redis.zcard(limiter.key(login_ip)) == 2


async def test_the_window_slides(limiter: RateLimiter) -> None:
    limit = lim("register", "192.0.2.9", 2, 1.0)
    assert (await limiter.hit([limit])).allowed
    await asyncio.sleep(0.5)
    assert (await limiter.hit([limit])).allowed
    refused = await limiter.hit([limit])
    assert not refused.allowed and refused.retry_after == 1
    await asyncio.sleep(0.6)  # only the first request has left the window
    assert (await limiter.hit([limit])).allowed
    assert not (await limiter.hit([limit])).allowed


async def test_keys_and_names_are_independent(limiter: RateLimiter) -> None:
    a, b = lim("login-ip", "10.1.1.1", 1, 60), lim("login-ip", "10.1.1.2", 1, 60)
    assert (await limiter.hit([a])).allowed and not (await limiter.hit([a])).allowed
    assert (await limiter.hit([b])).allowed
    assert (await limiter.hit([lim("register", "10.1.1.1", 1, 60)])).allowed


async def test_keys_are_namespaced_hashed_and_expire(limiter: RateLimiter, redis: Redis, prefix: str) -> None:
    limit = lim("password-reset", "carol@example.com", 5, 30)
    await limiter.hit([limit])
    keys = [k.decode() async for k in redis.scan_iter(match=f"{prefix}*")]
    assert keys == [limiter.key(limit)]
    assert keys[0].startswith(f"{prefix}ratelimit:password-reset:") and "carol" not in keys[0]
    assert 0 < await redis.pttl(keys[0]) <= 30_000


async def test_disabled_always_allows(redis: Redis, prefix: str) -> None:
    limiter = RateLimiter(redis, prefix, enabled=False)
    limit = lim("ip", "10.9.9.9", 1, 60)
    decisions = [await limiter.hit([limit]) for _ in range(5)]
    assert all(d.allowed for d in decisions) and decisions[0].headers() == {}
    assert [k async for k in redis.scan_iter(match=f"{prefix}*")] == []


async def test_redis_down_keeps_fallback_limits_in_memory_and_opens_the_others(
    private_valkey: EmbeddedValkey,
) -> None:
    client = Redis.from_url(private_valkey.url, socket_connect_timeout=0.5, socket_timeout=0.5)
    limiter = RateLimiter(client, "down:")
    login_ip, ip = lim("login-ip", "10.2.2.2", 2, 60, fallback=True), lim("ip", "10.2.2.2", 1, 60)
    assert (await limiter.hit([ip])).allowed  # ip is now exhausted in Redis
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        private_valkey.stop()
        decisions = [await limiter.hit([ip, login_ip]) for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, False]
        assert decisions[2].refused_by == "login-ip" and decisions[2].retry_after >= 59
        assert decisions[0].limit == 2 and decisions[0].remaining == 1
        open_only = [await limiter.hit([ip]) for _ in range(5)]
        assert all(d.allowed and d.headers() == {} for d in open_only)
    finally:
        logger.remove(sink)
        await client.aclose()
    assert limiter.redis_failures == 8
    assert len([w for w in warnings if "rate limiter: Redis unavailable" in w]) == 1  # once per 30 s

"""Sliding-window rate limits (SPEC §7.4): one atomic Lua check over all of a request's limits in Redis.

Each (limit name, key) is a sorted set of the request times it counted, scored in microseconds of the
Redis server clock. A request is counted against every limit only when none of them is exhausted, so
refused requests never use a slot. When Redis is unavailable, the limits marked `fallback` are enforced by
a per-process in-memory window with the same arithmetic, and the others are not enforced.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Errors that mean "Redis is unavailable" (as opposed to a bug in what we sent it).
UNAVAILABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
WARN_PERIOD = 30.0
MICROS = 1_000_000

# KEYS[i]: the sorted set of limit i. ARGV[1]: a member unique to this request; then, per limit, its count
# and its window in microseconds. Returns {allowed, now_us, then per limit: count, oldest_us, room_us}.
# `room` is the time of the entry whose departure frees a slot (exhausted limits only, else 0).
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local allowed = 1
local counts, rooms = {}, {}
for i = 1, #KEYS do
  local limit, window = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%d', now - window))
  local count = redis.call('ZCARD', KEYS[i])
  counts[i], rooms[i] = count, 0
  if count >= limit then
    allowed = 0
    local entry = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
    rooms[i] = tonumber(entry[2])
  end
end
local out = {allowed, now}
for i = 1, #KEYS do
  if allowed == 1 then
    local window = tonumber(ARGV[2 * i + 1])
    redis.call('ZADD', KEYS[i], string.format('%d', now), ARGV[1])
    redis.call('PEXPIRE', KEYS[i], string.format('%d', math.ceil(window / 1000)))
    counts[i] = counts[i] + 1
  end
  local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  out[#out + 1] = counts[i]
  out[#out + 1] = first[2] and tonumber(first[2]) or 0
  out[#out + 1] = rooms[i]
end
return out
"""


@dataclass(frozen=True)
class Limit:
    """One limit a request counts against: `key` (an IP, user id or canonical email) within `name`."""

    name: str
    key: str
    limit: int
    window: float  # seconds
    fallback: bool


@dataclass(frozen=True)
class Decision:
    """The outcome, described by the most restrictive limit. `limit == 0` means no limit applied."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int
    refused_by: str | None

    def headers(self) -> dict[str, str]:
        if self.limit == 0:
            return {}
        found = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            found["Retry-After"] = str(self.retry_after)
        return found


UNLIMITED = Decision(allowed=True, limit=0, remaining=0, reset=0, retry_after=0, refused_by=None)


@dataclass(frozen=True)
class _State:
    """What one window holds after the check: its count and the times (seconds) that matter."""

    limit: Limit
    count: int
    oldest: float
    room: float


def _decide(states: Sequence[_State], now: float, allowed: bool) -> Decision:
    if allowed:
        s = min(states, key=lambda s: (s.limit.limit - s.count, -(s.oldest + s.limit.window)))
        reset = math.ceil(s.oldest + s.limit.window)
        return Decision(True, s.limit.limit, max(0, s.limit.limit - s.count), reset, 0, None)
    exhausted = [s for s in states if s.count >= s.limit.limit]
    s = max(exhausted, key=lambda s: s.room + s.limit.window)
    retry_after = max(1, math.ceil(s.room + s.limit.window - now))
    reset = math.ceil(s.oldest + s.limit.window)
    return Decision(False, s.limit.limit, 0, reset, retry_after, s.limit.name)


class MemoryWindows:
    """The per-process fallback: the same sliding windows in memory, bounded to `max_keys` windows."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._windows: dict[tuple[str, str], tuple[float, deque[float]]] = {}
        self._max_keys = max_keys

    def __len__(self) -> int:
        return len(self._windows)

    def hit(self, limits: Sequence[Limit], now: float) -> Decision:
        if not limits:
            return UNLIMITED
        windows = [self._window(limit, now) for limit in limits]
        allowed = all(len(w) < limit.limit for w, limit in zip(windows, limits, strict=True))
        states, counted = [], set()
        for window, limit in zip(windows, limits, strict=True):
            count = len(window)
            room = window[count - limit.limit] if count >= limit.limit else 0.0
            if allowed and id(window) not in counted:  # a window listed twice counts the request once
                window.append(now)
                counted.add(id(window))
            states.append(_State(limit, len(window), window[0], room) if window else _State(limit, 0, now, 0.0))
        return _decide(states, now, allowed)

    def _window(self, limit: Limit, now: float) -> deque[float]:
        slot = (limit.name, limit.key)
        found = self._windows.get(slot)
        if found is None:
            if len(self._windows) >= self._max_keys:
                self._sweep(now)
            found = self._windows[slot] = (limit.window, deque())
        window = found[1]
        while window and window[0] <= now - limit.window:
            window.popleft()
        return window

    def _sweep(self, now: float) -> None:
        """Drop idle windows; if that frees less than a tenth, the oldest-created ones (memory stays bounded)."""
        idle = [slot for slot, (span, w) in self._windows.items() if not w or w[-1] <= now - span]
        for slot in idle:
            del self._windows[slot]
        target = self._max_keys - max(1, self._max_keys // 10)
        while len(self._windows) > target:
            del self._windows[next(iter(self._windows))]


class WarnEvery:
    """Logs a WARNING at most once per `period` seconds (a dependency outage must not flood the log)."""

    def __init__(self, period: float = WARN_PERIOD, clock: Callable[[], float] = time.monotonic) -> None:
        self._period = period
        self._clock = clock
        self._last: float | None = None

    def __call__(self, message: str, *args: Any) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self._period:
            return False
        self._last = now
        logger.warning(message, *args)
        return True


class RateLimiter:
    """Checks and counts a request against all its limits at once (`hit`)."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
        memory: MemoryWindows | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self.enabled = enabled
        self._clock = clock
        self.memory = memory or MemoryWindows()
        self._script = redis.register_script(SCRIPT)
        self._warn = WarnEvery()
        self.redis_failures = 0

    def key(self, limit: Limit) -> str:
        """The Redis key of a window: namespaced, with the limited value hashed (no email in clear)."""
        digest = hashlib.sha256(limit.key.encode()).hexdigest()[:32]
        return f"{self._prefix}ratelimit:{limit.name}:{digest}"

    async def hit(self, limits: Sequence[Limit]) -> Decision:
        if not self.enabled or not limits:
            return UNLIMITED
        args: list[str | int] = [os.urandom(12).hex()]
        for limit in limits:
            args += [limit.limit, max(1, round(limit.window * MICROS))]
        try:
            raw = await self._script(keys=[self.key(limit) for limit in limits], args=args)
        except UNAVAILABLE as exc:
            return self._fallback(limits, exc)
        return _from_script(limits, [int(v) for v in raw])

    def _fallback(self, limits: Sequence[Limit], exc: BaseException) -> Decision:
        self.redis_failures += 1
        self._warn(
            "rate limiter: Redis unavailable ({}); in-memory fallback for login/register/reset/verification "
            "limits, the others are not enforced",
            type(exc).__name__,
        )
        return self.memory.hit([limit for limit in limits if limit.fallback], self._clock())


def _from_script(limits: Sequence[Limit], raw: list[int]) -> Decision:
    allowed, now = raw[0] == 1, raw[1] / MICROS
    states = []
    for i, limit in enumerate(limits):
        count, oldest, room = raw[2 + 3 * i : 5 + 3 * i]
        states.append(_State(limit, count, oldest / MICROS if count else now, room / MICROS))
    return _decide(states, now, allowed)

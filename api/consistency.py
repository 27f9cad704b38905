"""Read-your-writes (SPEC §2.10): consistency tokens, the per-actor mark, and the bounded wait."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence

import asyncpg
from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from pandora_users.domain.errors import FieldError, InvalidRequest, ServiceBusy
from pandora_users.infra.redis_reads import CoalescedReads
from pandora_users.observability import metrics as m

TOKEN = re.compile(r"^c1\.([1-9][0-9]{0,18})$")
ACTOR_MARK_TTL = 60
# Raise (never lower) the actor's mark, refreshing its TTL.
_RAISE_MARK = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > v then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
"""
_REACHED = """
SELECT coalesce(min(position), 0) AS position, count(*) AS n
FROM projection_positions WHERE name = ANY($1::text[])
"""


def encode_token(position: int) -> str:
    """The opaque token a command returns; clients must not interpret it."""
    return f"c1.{position}"


def parse_token(value: str) -> int:
    match = TOKEN.match(value.strip())
    if not match:
        raise InvalidRequest(details=[FieldError("X-Consistency-Token", "malformed consistency token")])
    return int(match.group(1))


# How old a known projection position may be when a read has nothing to wait for (it only feeds the response's
# token, and a lower token is still a true one: the read reflects at least that position).
FRESH_ENOUGH = 0.1


class Consistency:
    def __init__(self, pool: asyncpg.Pool, redis: Redis, *, prefix: str, timeout: float) -> None:
        self.pool = pool
        self.redis = redis
        self.reads = CoalescedReads(redis)
        self.prefix = prefix
        self.timeout = timeout
        self._known: dict[tuple[str, ...], tuple[float, int]] = {}  # projections -> (when read, position)

    def mark_key(self, actor: str) -> str:
        return f"{self.prefix}consistency:{actor}"

    async def remember(self, actor: str, position: int | None) -> None:
        """For 60 s the actor's reads wait for its last write, even without the header."""
        if position is None:
            return
        try:
            key = self.mark_key(actor)
            await self.redis.eval(_RAISE_MARK, 1, key, position, ACTOR_MARK_TTL)
        except RedisError as exc:
            logger.warning("consistency mark not recorded: {}", type(exc).__name__)

    async def _actor_mark(self, actor: str | None) -> int:
        if actor is None:
            return 0
        try:
            (value,) = await self.reads.mget(self.mark_key(actor))
        except RedisError:
            return 0
        return int(value) if value else 0

    async def wait(
        self, projections: Sequence[str], *, header: str | None, actor: str | None, mark: int | None = None
    ) -> int:
        """Wait until every projection has processed the wanted position; returns the position reached.

        `mark` is the actor's mark when the caller has read it already (with the session check).
        """
        return await self.wait_for(projections, await self.wanted(header=header, actor=actor, mark=mark))

    async def wanted(self, *, header: str | None, actor: str | None, mark: int | None = None) -> int:
        """The position a read must reflect: the token's, the actor's last write, whichever is later."""
        wanted = 0
        if header is not None:
            wanted = parse_token(header)
            head = await self.pool.fetchval("SELECT coalesce(max(notification_id), 0) FROM pandora_events")
            if wanted > head:
                raise InvalidRequest(details=[FieldError("X-Consistency-Token", "beyond the end of the log")])
        return max(wanted, mark if mark is not None else await self._actor_mark(actor))

    async def wait_for(self, projections: Sequence[str], wanted: int) -> int:
        """Wait until every projection has processed `wanted`; returns the position reached."""
        started = time.monotonic()
        known = self._known.get(tuple(projections))
        # Positions only grow: a position known to be reached that covers the wanted one needs no query. With
        # nothing wanted it only feeds the response's token, so it may be a little old.
        if known is not None and known[1] >= wanted and (wanted > 0 or started - known[0] < FRESH_ENOUGH):
            m.soon_histogram(m.consistency_wait, "immediate").observe(0.0)
            return known[1]
        deadline = started + self.timeout
        delay = 0.002
        while True:
            reached = await self.reached(projections)
            if reached >= wanted:
                outcome = "immediate" if delay == 0.002 else "waited"
                m.consistency_wait.labels(outcome).observe(time.monotonic() - started)
                return reached
            if time.monotonic() >= deadline:
                m.consistency_wait.labels("timeout").observe(time.monotonic() - started)
                raise ServiceBusy(extra={"retry_after_seconds": 1})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def reached(self, projections: Sequence[str]) -> int:
        """The lowest position the given projections have all processed (0 if one never ran)."""
        row = await self.pool.fetchrow(_REACHED, list(projections))
        position = int(row["position"]) if row and row["n"] == len(projections) else 0
        self._known[tuple(projections)] = (time.monotonic(), position)
        return position

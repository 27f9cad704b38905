"""The session-liveness check of SPEC §6.6: Redis first (one lookup), PostgreSQL when Redis fails.

An authenticated request also needs its actor's read-your-writes mark (SPEC §2.10), another Redis key: both are
read in the one round trip (`state_and_mark`), which carries the keys of the process's other requests of the
same event-loop iteration too (`CoalescedReads`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from uuid import UUID

import asyncpg
from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from pandora_users.commands.base import EndedSession
from pandora_users.infra.redis_reads import CoalescedReads
from pandora_users.observability import metrics as m
from pandora_users.observability.metrics import soon_counter
from projections.revocations import is_revoked, reason_class, record_revocations, revocation_key

DELETED_REASONS = ("account_deleted", "account_erased")


class SessionLiveness:
    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        *,
        prefix: str,
        access_ttl: float,
        mark_key: Callable[[str], str],
    ) -> None:
        self.redis = redis
        self.reads = CoalescedReads(redis)
        self.pool = pool
        self.prefix = prefix
        self.access_ttl = access_ttl
        self.mark_key = mark_key

    async def state(self, session_id: UUID) -> str | None:
        """None when live, else `revoked` or `deleted` (the account was deleted or erased)."""
        try:
            state = await is_revoked(self.redis, self.prefix, session_id)
        except (RedisError, OSError) as exc:
            logger.warning("revocation check falls back to PostgreSQL: {}", type(exc).__name__)
        else:
            soon_counter(m.revocation_checks, "redis", "live" if state is None else "revoked").add()
            return state
        return await self._from_postgres(session_id)

    async def state_and_mark(self, session_id: UUID, actor: str) -> tuple[str | None, int | None]:
        """The session's state and the actor's consistency mark (None: unknown, read it again), in one MGET."""
        try:
            raw_state, raw_mark = await self.reads.mget(revocation_key(self.prefix, session_id), self.mark_key(actor))
        except (RedisError, OSError) as exc:
            logger.warning("revocation check falls back to PostgreSQL: {}", type(exc).__name__)
            return await self._from_postgres(session_id), None
        state = reason_class(raw_state)
        soon_counter(m.revocation_checks, "redis", "live" if state is None else "revoked").add()
        return state, int(raw_mark) if raw_mark else 0

    async def _from_postgres(self, session_id: UUID) -> str | None:
        row = await self.pool.fetchrow("SELECT ended_at, end_reason FROM sessions WHERE id = $1", session_id)
        if row is None:
            state = "deleted"  # erasure deletes the session rows
        elif row["ended_at"] is None:
            state = None
        else:
            state = "deleted" if row["end_reason"] in DELETED_REASONS else "revoked"
        soon_counter(m.revocation_checks, "postgres", "live" if state is None else "revoked").add()
        return state

    async def record(self, ended: Sequence[EndedSession]) -> None:
        """After a command commits and before it answers; the revocations projector repairs a failed write."""
        try:
            await record_revocations(self.redis, self.prefix, self.access_ttl, ended)
        except (RedisError, OSError) as exc:
            logger.warning("revocation entries not written to Redis ({}); PostgreSQL remains authoritative", exc)

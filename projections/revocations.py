"""Revoked-session entries in Redis (SPEC §6.6): written by commands after they commit, replayed by a projector.

An entry `<prefix>revoked:<session_id>` holds the reason class (`deleted` for account deletion or erasure,
`revoked` otherwise) and expires `JWT_ACCESS_TOKEN_EXPIRY` + 60 s after the session ended: by then every
access token of the session has expired. Writes are idempotent (SET with an absolute expiry), so the
projector may replay any event any number of times.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
import redis
from redis import asyncio as aioredis

from pandora_users.commands.base import EndedSession
from pandora_users.domain import events as ev
from projections.forwarder import RedisRetry, connect
from projections.runner import Envelope

if TYPE_CHECKING:
    from projections.registry import ProjectionDeps

MARGIN = 60.0  # seconds beyond the access-token lifetime


def revocation_key(prefix: str, session_id: UUID | str) -> str:
    return f"{prefix}revoked:{str(session_id).lower()}"


@dataclass(frozen=True)
class Revocation:
    """One entry to write: key, reason class, and when it stops mattering (epoch milliseconds)."""

    key: str
    reason_class: str
    expires_at_ms: int


def revocation_of(
    prefix: str, ended: EndedSession, ended_at: datetime, access_token_ttl: float, now: datetime
) -> Revocation | None:
    """The entry for a session that ended at `ended_at`; None when it would already have expired."""
    expires = ended_at + timedelta(seconds=access_token_ttl + MARGIN)
    if expires <= now:
        return None
    return Revocation(
        revocation_key(prefix, ended.session_id), ended.reason_class, math.ceil(expires.timestamp() * 1000)
    )


async def record_revocations(
    redis_async: aioredis.Redis, prefix: str, access_token_ttl: float, ended: Sequence[EndedSession]
) -> None:
    """After a command commits: one entry per ended session, in one pipeline.

    Redis errors propagate; the caller logs them and answers anyway (the command has committed, the liveness
    check falls back to PostgreSQL, and the `revocations` projector restores the entries).
    """
    now = datetime.now(UTC)
    entries = [r for s in ended if (r := revocation_of(prefix, s, now, access_token_ttl, now))]
    if not entries:
        return
    async with redis_async.pipeline(transaction=False) as pipe:
        for entry in entries:
            pipe.set(entry.key, entry.reason_class, pxat=entry.expires_at_ms)
        await pipe.execute()


async def is_revoked(redis_async: aioredis.Redis, prefix: str, session_id: UUID | str) -> str | None:
    """The reason class of a revoked session, or None. Redis errors propagate: fall back to PostgreSQL."""
    return reason_class(await redis_async.get(revocation_key(prefix, session_id)))


def reason_class(value: bytes | str | None) -> str | None:
    """A revocation entry's value as text (clients may decode responses or not); None when there is none."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def ended_session(event: ev.DomainEvent) -> EndedSession | None:
    """The session a terminal session event ends (`user.token_reuse_detected` is followed by a revocation)."""
    if isinstance(event, ev.SessionRevoked):
        return EndedSession(UUID(event.session_id), event.user_id, event.reason)
    if isinstance(event, ev.SessionLoggedOut):
        return EndedSession(UUID(event.session_id), event.user_id, "logged_out")
    return None


class RevocationsProjection:
    """Replays session-ending events into Redis; skips entries that would already have expired."""

    name = "revocations"

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        access_token_ttl: float,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        patience: float = 30.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.access_token_ttl = access_token_ttl
        self.clock = clock
        self.stopping = threading.Event()
        self.retry = RedisRetry("revocations", self.stopping, patience=patience)
        self.written = 0

    @classmethod
    def from_deps(cls, deps: ProjectionDeps) -> RevocationsProjection:
        if not deps.redis_url:
            raise ValueError("the revocations projector needs Redis (REDIS_URL)")
        return cls(connect(deps.redis_url), deps.redis_key_prefix, deps.access_token_ttl)

    def stop(self) -> None:
        """Abandon a Redis retry loop at once (the batch is rolled back, nothing is parked)."""
        self.stopping.set()

    def apply(self, conn: psycopg.Connection[Any], batch: Sequence[Envelope]) -> None:
        now = self.clock()
        entries = [
            entry
            for env in batch
            if (ended := ended_session(env.event))
            and (entry := revocation_of(self.prefix, ended, env.event.timestamp, self.access_token_ttl, now))
        ]
        if entries:
            self.retry.call(lambda: self._write(entries), lambda: conn.execute("SELECT 1"))
            self.written += len(entries)

    def _write(self, entries: Sequence[Revocation]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.set(entry.key, entry.reason_class, pxat=entry.expires_at_ms)
        pipe.execute()

"""Ending sessions: one terminal event per session plus the credential row, in the command's transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from pandora_users.commands.base import EndedSession, WriteSide, Written, with_retries
from pandora_users.domain import session as session_agg
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.domain.errors import InvalidRefreshToken, SessionNotFound
from pandora_users.domain.events import DomainEvent
from pandora_users.domain.session import Session
from pandora_users.security.tokens import hash_opaque_token
from pandora_users.store import credentials as cred
from pandora_users.store.recorder import CredentialOp


@dataclass
class Batch:
    """Events and credential operations that a command will commit together."""

    events: list[DomainEvent] = field(default_factory=list)
    ops: list[CredentialOp] = field(default_factory=list)
    ended: list[EndedSession] = field(default_factory=list)

    def extend(self, other: Batch) -> None:
        self.events += other.events
        self.ops += other.ops
        self.ended += other.ended


def load_session(w: WriteSide, session_id: UUID) -> Session | None:
    return w.store.load(session_id, session_agg.project)


def end_sessions(w: WriteSide, user_id: UUID, reason: str, ctx: Context, *, keep: UUID | None = None) -> Batch:
    """End every live session of a user (both audiences), except `keep`."""
    batch = Batch()
    rows = cred.live_sessions(w.store.datastore, user_id, ctx.now, w.config.session_idle_timeout)
    for row in rows:
        if row["id"] == keep:
            continue
        batch.extend(end_one(w, row["id"], reason, ctx))
    return batch


def end_one(w: WriteSide, session_id: UUID, reason: str, ctx: Context, *, logged_out: bool = False) -> Batch:
    session = load_session(w, session_id)
    if session is None or session.ended_at is not None:
        return Batch()
    events = session_agg.log_out(session, ctx=ctx) if logged_out else session_agg.revoke(session, reason, ctx=ctx)
    end_reason = "logged_out" if logged_out else reason
    return Batch(
        events=list(events),
        ops=[cred.end_session(session_id, end_reason, ctx.now)],
        ended=[EndedSession(session_id, session.user_id, end_reason)],
    )


def commit(w: WriteSide, batch: Batch, aggregate_id: UUID, version: int) -> Written:
    position = w.store.append(batch.events, batch.ops) if (batch.events or batch.ops) else None
    return Written(aggregate_id, version, position, tuple(batch.ended))


def _is_live_row(w: WriteSide, row: dict[str, object] | None, now: datetime) -> bool:
    if row is None or row["ended_at"] is not None or now >= row["expires_at"]:  # type: ignore[operator]
        return False
    idle = w.config.session_idle_timeout
    return not idle or (now - row["last_used_at"]).total_seconds() < idle  # type: ignore[operator]


async def revoke_own_session(w: WriteSide, user_id: UUID, session_id: UUID, ctx: Context) -> Written:
    """DELETE /users/me/sessions/{id}: someone else's, unknown or ended sessions all give 404."""

    def attempt() -> Written:
        row = cred.session_row(w.store.datastore, session_id)
        if not _is_live_row(w, row, ctx.now) or row is None or row["user_id"] != user_id:
            raise SessionNotFound()
        batch = end_one(w, session_id, "user_revoked", ctx)
        return commit(w, batch, session_id, 0)

    return await w.after_commit(await w.run(with_retries, attempt))


async def revoke_session(w: WriteSide, session_id: UUID, reason: str, ctx: Context) -> Written:
    """An administrator ends a session by id (404 when unknown or already ended)."""

    def attempt() -> Written:
        row = cred.session_row(w.store.datastore, session_id)
        if not _is_live_row(w, row, ctx.now):
            raise SessionNotFound()
        return commit(w, end_one(w, session_id, reason, ctx), session_id, 0)

    return await w.after_commit(await w.run(with_retries, attempt))


async def log_out(w: WriteSide, user_id: UUID, refresh_token: str, ctx: Context) -> Written:
    """End the session of the caller's *current* refresh token; anything else is 401 and changes nothing."""

    def attempt() -> Written:
        if len(refresh_token) > 512:
            raise InvalidRefreshToken()
        row = cred.refresh_token_row(w.store.datastore, hash_opaque_token(refresh_token))
        current = row is not None and row["token_generation"] == row["generation"]
        if not current or row is None or row["user_id"] != user_id or not _is_live_row(w, row, ctx.now):
            raise InvalidRefreshToken()
        return commit(w, end_one(w, row["id"], "logged_out", ctx, logged_out=True), row["id"], 0)

    return await w.after_commit(await w.run(with_retries, attempt))


async def log_out_all(w: WriteSide, user_id: UUID, ctx: Context) -> Written:
    """End every live session (both audiences), then `user.logged_out_all`; nothing when none is live."""

    def attempt() -> Written:
        user = user_agg.require_live(w.store.load_user(user_id, user_agg.project))
        batch = end_sessions(w, user_id, "logout_all", ctx)
        ids = [str(e.session_id) for e in batch.ended]
        batch.events += user_agg.log_out_all(user, ids, ctx=ctx)
        return commit(w, batch, user_id, user.version + (1 if ids else 0))

    return await w.after_commit(await w.run(with_retries, attempt))

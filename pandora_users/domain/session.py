"""The session aggregate: one login on one device. Refresh rotation is credential-store state, not events."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import msgspec

from pandora_users.domain import events as ev
from pandora_users.domain.context import AggregateState, Context, new_event

AUDIENCES = ("pandora-api", "pandora-admin")
REVOKE_REASONS = frozenset(
    {
        "user_revoked",
        "admin_revoked",
        "logout_all",
        "password_changed",
        "password_reset",
        "role_changed",
        "account_deleted",
        "account_erased",
        "token_reuse",
        "session_limit",
    }
)


class Session(AggregateState, frozen=True, kw_only=True):
    user_id: UUID
    audience: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None

    def is_live(self, now: datetime) -> bool:
        return self.ended_at is None and now < self.expires_at


def log_in(
    session_id: UUID,
    *,
    user_id: UUID,
    email: str,
    audience: str,
    expires_at: datetime,
    ip_address: str | None,
    user_agent: str | None,
    ctx: Context,
) -> ev.SessionLoggedIn:
    if audience not in AUDIENCES:
        raise ValueError(f"unknown audience {audience!r}")
    return new_event(
        ev.SessionLoggedIn,
        session_id,
        1,
        user_id,
        ctx,
        session_id=str(session_id),
        email=email,
        ip_address=ip_address,
        user_agent=user_agent[:512] if user_agent else user_agent,
        audience=audience,
        expires_at=expires_at,
    )


def log_out(session: Session, *, ctx: Context) -> list[ev.DomainEvent]:
    if session.ended_at is not None:
        return []
    return [_next(session, ev.SessionLoggedOut, ctx)]


def revoke(session: Session, reason: str, *, ctx: Context) -> list[ev.DomainEvent]:
    """End the session for `reason` (SPEC §6.5). Ending an ended session emits nothing."""
    if reason not in REVOKE_REASONS:
        raise ValueError(f"unknown revocation reason {reason!r}")
    if session.ended_at is not None:
        return []
    return [_next(session, ev.SessionRevoked, ctx, reason=reason)]


def detect_reuse(
    session: Session, *, ip_address: str | None, user_agent: str | None, ctx: Context
) -> list[ev.DomainEvent]:
    """A rotated refresh token came back: record it and end the session (SPEC §6.4 step 4)."""
    if session.ended_at is not None:
        return []
    reuse = _next(
        session,
        ev.SessionTokenReuseDetected,
        ctx,
        ip_address=ip_address,
        user_agent=user_agent[:512] if user_agent else user_agent,
    )
    ended = apply(session, reuse)
    return [reuse, *revoke(ended, "token_reuse", ctx=ctx)]


def _next(session: Session, cls: type[ev.DomainEvent], ctx: Context, **payload: object) -> ev.DomainEvent:
    return new_event(
        cls,
        session.id,
        session.version + 1,
        session.user_id,
        ctx,
        session_id=str(session.id),
        audience=session.audience,
        **payload,
    )


def apply(session: Session | None, event: ev.DomainEvent) -> Session:
    if isinstance(event, ev.SessionLoggedIn):
        return Session(
            id=event.originator_id,
            version=event.originator_version,
            user_id=event.user_id,
            audience=event.audience,
            created_at=event.timestamp,
            expires_at=event.expires_at,
        )
    if session is None:
        raise ValueError(f"{type(event).__name__} before user.logged_in")
    changes: dict[str, object] = {"version": event.originator_version}
    if isinstance(event, ev.SessionLoggedOut):
        changes.update(ended_at=event.timestamp, end_reason="logged_out")
    elif isinstance(event, ev.SessionRevoked):
        changes.update(ended_at=event.timestamp, end_reason=event.reason)
    return msgspec.structs.replace(session, **changes)


def project(session: Session | None, events: Iterable[ev.DomainEvent]) -> Session | None:
    """Fold one session's events (None when the id is not a session's)."""
    for event in events:
        if session is None and not isinstance(event, ev.SessionLoggedIn):
            return None
        session = apply(session, event)
    return session

"""Login (public and admin) and refresh-token rotation with reuse detection (SPEC §3.1.2, §6.4, §7.5)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from pandora_users.commands.base import MAX_ATTEMPTS, EndedSession, WriteSide, Written, with_retries
from pandora_users.commands.registration import SessionGrant
from pandora_users.commands.sessions import Batch, commit, end_one, load_session
from pandora_users.domain import email_index
from pandora_users.domain import session as session_agg
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.domain.errors import AccountLocked, InvalidCredentials, InvalidRefreshToken, ServiceBusy
from pandora_users.domain.fields import canonical_email
from pandora_users.domain.user import User
from pandora_users.security.passwords import normalize_password
from pandora_users.security.tokens import hash_opaque_token, new_opaque_token
from pandora_users.store import credentials as cred

SYSTEM = {"actor_id": "system", "actor_role": "system"}


@dataclass(frozen=True)
class LoginAttempt:
    email: str
    password: str
    audience: str = "pandora-api"
    ip_address: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class LoginOutcome:
    """Facts the edge records in the access log besides the grant or the error."""

    grant: SessionGrant
    after_failures: int


def lockout_key(w: WriteSide, raw_email: str) -> tuple[str | None, UUID]:
    """The canonical email (None if invalid) and the lockout key, the same for existing and unknown accounts."""
    email = canonical_email(raw_email)
    return email, email_index.index_id(w.pepper, email or raw_email.strip().lower())


def password_form_ok(password: str, max_length: int) -> bool:
    """SPEC §3.1.2 step 4: decided by the password's form alone, before any lookup or hashing."""
    return bool(password) and "\x00" not in password and len(password) <= max_length and len(password.encode()) <= 512


def find_account(w: WriteSide, email: str | None) -> tuple[User | None, str | None]:
    """The live user behind a canonical email and their password hash (write side only, never read models)."""
    if email is None:
        return None, None
    index = w.store.load(email_index.index_id(w.pepper, email), email_index.project)
    if index is None or index.owner is None:
        return None, None
    user = w.store.load_user(index.owner, user_agg.project)
    if user is None or not user.is_active:
        return None, None
    return user, cred.password_hash(w.store.datastore, user.id)


@dataclass(frozen=True)
class Verified:
    """The outcome of one password check: the user (None = failed) and facts for the access log."""

    user: User | None
    prior_failures: int = 0
    lockout_failures: int | None = None  # set when this failure started a lock

    def audit(self) -> dict[str, object]:
        if self.lockout_failures is None:
            return {}
        return {"lockout_started": True, "lockout_failures": self.lockout_failures}


async def verify_password(w: WriteSide, attempt: LoginAttempt, ctx: Context) -> Verified:
    """Reserve an attempt, verify exactly once, record the outcome."""
    if not password_form_ok(attempt.password, w.config.password_max_length):
        return Verified(None)
    w.hasher.refuse_if_full()
    email, key = lockout_key(w, attempt.email)
    user, stored = await w.run(find_account, w, email)
    reservation = await w.run(w.lockout.reserve, key, user.id if user else None, ctx.now)
    if not reservation.granted:
        retry = (reservation.locked_until - ctx.now).total_seconds() if reservation.locked_until else 1
        raise AccountLocked(extra={"retry_after_seconds": max(1, int(retry + 0.999))})
    password = normalize_password(attempt.password)
    try:
        if user is None or stored is None:
            await w.hasher.verify_dummy(password)
        else:
            result = await w.hasher.verify(stored, password)
    except BaseException:
        # No verification happened (the hashing pool shed the request, or it was cancelled): the attempt must
        # not count, or a busy service would lock accounts out on its own.
        await asyncio.shield(w.run(w.lockout.release, key))
        raise
    if user is None or stored is None:
        failure = await w.run(w.lockout.fail, key, ctx.now)
        return Verified(None, lockout_failures=failure.failures if failure.locked_until else None)
    if not result.ok:
        failure = await w.run(w.lockout.fail, key, ctx.now)
        if failure.locked_until is not None:
            await w.run(_record_lock, w, user.id, failure.locked_until, failure.failures, ctx)
        return Verified(None, lockout_failures=failure.failures if failure.locked_until else None)
    prior = await w.run(w.lockout.clear, key)
    if result.needs_rehash:
        new_hash = await w.hasher.hash(password)
        await w.run(w.store.append, [], [cred.replace_password_hash(user.id, stored, new_hash, ctx.now)])
    return Verified(user, prior)


def _may_log_in(w: WriteSide, user_id: UUID, audience: str) -> User:
    """The user as now stored, if they may still hold a session of this audience."""
    user = w.store.load_user(user_id, user_agg.project)
    if user is None or not user.is_active:
        raise InvalidCredentials(audit={"reason": "user_changed", "user_id": str(user_id)})
    if audience == "pandora-admin" and user.role != "admin":
        raise InvalidCredentials(audit={"reason": "not_admin", "user_id": str(user_id)})
    return user


def _record_lock(w: WriteSide, user_id: UUID, until: datetime, failures: int, ctx: Context) -> None:
    system_ctx = Context(now=ctx.now, metadata={**ctx.metadata, **SYSTEM})

    def attempt() -> Written:
        user = w.store.load_user(user_id, user_agg.project)
        if user is None:
            return Written(user_id, 0, None)
        events = user_agg.lock(user, until=until, failed_attempts=failures, ctx=system_ctx)
        return commit(w, Batch(events=list(events)), user_id, user.version + len(events))

    with_retries(attempt)


async def log_in(w: WriteSide, attempt: LoginAttempt, ctx: Context) -> LoginOutcome:
    """Public or admin login. Every failure is the same `invalid_credentials`."""
    verified = await verify_password(w, attempt, ctx)
    user, prior = verified.user, verified.prior_failures
    if user is None:
        raise InvalidCredentials(audit=verified.audit())
    if attempt.audience == "pandora-admin" and user.role != "admin":
        raise InvalidCredentials(audit={"reason": "not_admin", "user_id": str(user.id)})
    session_id = uuid.uuid4()
    refresh_token, refresh_hash = new_opaque_token()
    expires_at = ctx.now + timedelta(seconds=w.config.refresh_ttl)
    actor = "admin" if attempt.audience == "pandora-admin" else "user"
    user_ctx = Context(now=ctx.now, metadata={**ctx.metadata, "actor_id": str(user.id), "actor_role": actor})

    current, runs = user, itertools.count()

    def commit_login() -> Written:
        # The session opens only while the user is at the version checked (`NewSession.user_version`): a deletion
        # or demotion committed since the password check ended the user's sessions without this one. A re-run
        # checks the user again on fresh state.
        nonlocal current
        if next(runs):
            current = _may_log_in(w, user.id, attempt.audience)
        batch = _session_limit(w, current.id, user_ctx)
        batch.events.append(
            session_agg.log_in(
                session_id,
                user_id=current.id,
                email=current.email,
                audience=attempt.audience,
                expires_at=expires_at,
                ip_address=attempt.ip_address,
                user_agent=attempt.user_agent,
                ctx=user_ctx,
            )
        )
        ua = attempt.user_agent[:512] if attempt.user_agent else None
        batch.ops += cred.open_session(
            cred.NewSession(
                session_id,
                current.id,
                attempt.audience,
                ctx.now,
                expires_at,
                attempt.ip_address,
                ua,
                refresh_hash,
                user_version=current.version,
            )
        )
        return commit(w, batch, session_id, 1)

    written = await w.after_commit(await w.run(with_retries, commit_login))
    grant = SessionGrant(current, session_id, attempt.audience, refresh_token, expires_at, ctx.now, written.position)
    return LoginOutcome(grant, prior)


def _session_limit(w: WriteSide, user_id: UUID, ctx: Context) -> Batch:
    """Beyond SESSION_MAX_PER_USER live sessions, the oldest ones end (reason `session_limit`)."""
    rows = cred.live_sessions(w.store.datastore, user_id, ctx.now, w.config.session_idle_timeout)
    batch = Batch()
    for row in rows[w.config.session_max_per_user - 1 :][::-1]:
        batch.extend(end_one(w, row["id"], "session_limit", ctx))
    return batch


@dataclass(frozen=True)
class RefreshAttempt:
    refresh_token: str
    audience: str = "pandora-api"
    ip_address: str | None = None
    user_agent: str | None = None


async def refresh(w: WriteSide, attempt: RefreshAttempt, ctx: Context) -> SessionGrant:
    """SPEC §6.4: rotate with one compare-and-set; a rotated token ends the whole session."""
    if not attempt.refresh_token or len(attempt.refresh_token) > 512:
        raise InvalidRefreshToken()
    new_token, new_hash = new_opaque_token()
    found = await _rotate_if_valid(w, hash_opaque_token(attempt.refresh_token), new_hash, attempt.audience, ctx)
    if found is None:
        raise InvalidRefreshToken()
    row, user, rotated = found
    session_id = UUID(bytes=row["id"].bytes)
    if not rotated:
        await _reuse_detected(w, session_id, attempt, ctx)
        raise InvalidRefreshToken(audit={"reuse": True, "user_id": str(user.id), "session_id": str(session_id)})
    return SessionGrant(user, session_id, row["audience"], new_token, row["expires_at"], row["created_at"], None)


async def _rotate_if_valid(
    w: WriteSide, token_hash: bytes, new_hash: bytes, audience: str, ctx: Context
) -> tuple[Any, User, bool] | None:
    """On the event loop: one statement looks the token up and rotates it when it is current and its session
    live (`cred.rotate_refresh_token`); then the user at the version read in that statement's snapshot (from this
    process's recent loads when it has that version, else loaded on the write pool) must still be allowed the
    session. Returns the session row, the user and whether the token was rotated (False: the token is a rotated
    one of a live session); None when the token cannot be refreshed.

    A user who may not refresh with a live session is a race (a login whose session committed after the user's
    deletion or demotion ended the others): the rotation is undone, so step 3 changes nothing. A current token that
    was not rotated lost the compare-and-set to a concurrent change; the next round decides on the new state."""
    for _ in range(MAX_ATTEMPTS):
        row = await cred.rotate_refresh_token(
            w.statements, token_hash, new_hash, audience, ctx.now, w.config.session_idle_timeout
        )
        if row is None:
            return None
        rotated = row["rotated_to"] is not None
        if not rotated and not row["refreshable"]:  # ended, expired, idle, or of another audience
            return None
        user_id, version = UUID(bytes=row["user_id"].bytes), row["user_version"]
        try:
            user = w.store.recent_users.get(user_id, version)
            if user is None:
                user = await w.run(w.store.load_user_at, user_id, version, user_agg.project)
        except BaseException:
            # The new token will reach nobody (the load failed, or the caller left): undone, the presented
            # token still works, where a client's retry would otherwise be taken for a reuse.
            if rotated:
                await asyncio.shield(cred.unrotate_refresh_token(w.statements, row, new_hash))
            raise
        if user is None or not user.is_active or (audience == "pandora-admin" and user.role != "admin"):
            if rotated:
                await cred.unrotate_refresh_token(w.statements, row, new_hash)
            return None
        if rotated or row["token_generation"] != row["generation"]:
            return row, user, rotated
    raise ServiceBusy(extra={"retry_after_seconds": 1})


async def _reuse_detected(w: WriteSide, session_id: UUID, attempt: RefreshAttempt, ctx: Context) -> None:
    def commit_reuse() -> Written:
        session = load_session(w, session_id)
        if session is None or session.ended_at is not None:
            return Written(session_id, 0, None)
        events = session_agg.detect_reuse(
            session, ip_address=attempt.ip_address, user_agent=attempt.user_agent, ctx=ctx
        )
        batch = Batch(events=list(events), ops=[cred.end_session(session_id, "token_reuse", ctx.now)])
        batch.ended.append(EndedSession(session_id, session.user_id, "token_reuse"))
        return commit(w, batch, session_id, session.version + len(events))

    await w.after_commit(await w.run(with_retries, commit_reuse))

"""Self-service commands on the caller's own account (SPEC §3.2)."""

from __future__ import annotations

from uuid import UUID

from pandora_users.commands.authentication import LoginAttempt, verify_password
from pandora_users.commands.base import WriteSide, Written, with_retries
from pandora_users.commands.sessions import Batch, commit, end_sessions
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context, Pending
from pandora_users.domain.errors import EmailNotVerified, InvalidCredentials, InvalidKycStatus, UserNotFound
from pandora_users.domain.fields import clean_name
from pandora_users.domain.user import User
from pandora_users.security.passwords import check_password_policy, normalize_password
from pandora_users.store import credentials as cred


def load_live(w: WriteSide, user_id: UUID) -> User:
    return user_agg.require_live(w.store.load_user(user_id, user_agg.project))


async def get_user(w: WriteSide, user_id: UUID) -> User:
    """The live user from the write model (used by commands' responses, never by queries)."""
    return await w.run(load_live, w, user_id)


async def update_profile(
    w: WriteSide,
    user_id: UUID,
    *,
    first_name: str | None,
    last_name: str | None,
    if_match: int | None,
    ctx: Context,
) -> tuple[User, Written]:
    """PUT/PATCH /users/me. Equal names: no event."""
    first = None if first_name is None else clean_name(first_name, "first_name")
    last = None if last_name is None else clean_name(last_name, "last_name")

    def attempt() -> tuple[User, Written]:
        user = load_live(w, user_id)
        user_agg.check_version(user, if_match)
        pending = Pending(user, user_agg.apply)
        pending.add(user_agg.update_profile(user, first_name=first, last_name=last, ctx=ctx))
        return pending.state, commit(w, Batch(events=pending.events), user_id, pending.state.version)

    return await w.run(with_retries, attempt)


async def change_password(
    w: WriteSide, user_id: UUID, session_id: UUID, *, current: str, new: str, ctx: Context
) -> Written:
    """Verify the current password through the login path, then change it and end every other session."""
    user = await get_user(w, user_id)
    new_pw = normalize_password(new)
    c = w.config
    check_password_policy(
        new_pw,
        field="new_password",
        email=user.email,
        min_length=c.password_min_length,
        max_length=c.password_max_length,
        blocklist=w.blocklist,
        current_password=normalize_password(current),
    )
    verified = await verify_password(w, LoginAttempt(user.email, current), ctx)
    if verified.user is None or verified.user.id != user_id:
        raise InvalidCredentials(audit=verified.audit())
    new_hash = await w.hasher.hash(new_pw)

    def attempt() -> Written:
        fresh = load_live(w, user_id)
        batch = Batch(events=[user_agg.change_password(fresh, method="change", ctx=ctx)])
        batch.ops += [
            cred.set_password(user_id, new_hash, ctx.now),
            cred.invalidate_reset_tokens(user_id, ctx.now),
        ]
        batch.extend(end_sessions(w, user_id, "password_changed", ctx, keep=session_id))
        return commit(w, batch, user_id, fresh.version + 1)

    return await w.after_commit(await w.run(with_retries, attempt))


async def delete_user(
    w: WriteSide, user_id: UUID, *, if_match: int | None, ctx: Context, must_be_live: bool
) -> tuple[User, Written]:
    """Soft delete (self or admin): `user.deleted` and every session ends (`account_deleted`)."""

    def attempt() -> tuple[User, Written]:
        user = w.store.load_user(user_id, user_agg.project)
        if user is None or (must_be_live and not user.is_active):
            raise UserNotFound()
        user_agg.check_version(user, if_match)
        pending = Pending(user, user_agg.apply)
        pending.add(user_agg.delete(user, ctx=ctx))
        batch = Batch(events=pending.events)
        if batch.events:
            batch.extend(end_sessions(w, user_id, "account_deleted", ctx))
        return pending.state, commit(w, batch, user_id, pending.state.version)

    user, written = await w.run(with_retries, attempt)
    return user, await w.after_commit(written)


async def resubmit_kyc(w: WriteSide, user_id: UUID, status: str, ctx: Context) -> tuple[User, Written]:
    """PATCH /users/me/kyc: only `pending`, only after a rejection (and a verified email when required)."""

    def attempt() -> tuple[User, Written]:
        user = load_live(w, user_id)
        if status != "pending":
            raise InvalidKycStatus()
        if w.config.email_verification_required and user.email_verified_at is None:
            raise EmailNotVerified()
        pending = Pending(user, user_agg.apply)
        pending.add(user_agg.change_kyc(user, status, self_service=True, ctx=ctx))
        return pending.state, commit(w, Batch(events=pending.events), user_id, pending.state.version)

    return await w.run(with_retries, attempt)

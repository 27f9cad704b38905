"""Email verification and password reset through single-use link tokens (SPEC §3.1.4–§3.1.6)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from pandora_users.commands.base import WriteSide, Written, with_retries
from pandora_users.commands.sessions import Batch, commit, end_sessions
from pandora_users.domain import email_index, link
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context, Pending
from pandora_users.domain.errors import InvalidToken
from pandora_users.domain.fields import canonical_email
from pandora_users.domain.user import User
from pandora_users.security.passwords import check_password_policy, normalize_password
from pandora_users.security.tokens import hash_opaque_token, new_opaque_token
from pandora_users.store import credentials as cred


def _request_link(w: WriteSide, user: User, purpose: str, ctx: Context) -> Batch:
    ttl = (
        w.config.email_verification_token_ttl if purpose == "email_verification" else w.config.password_reset_token_ttl
    )
    url = w.config.email_verification_url if purpose == "email_verification" else w.config.password_reset_url
    token, token_hash = new_opaque_token()
    expires_at = ctx.now + timedelta(seconds=ttl)
    current = w.store.load(link.link_id(user.id, purpose), link.project)
    event = link.request(
        current,
        user_id=user.id,
        purpose=purpose,
        email=user.email,
        first_name=user.first_name,
        token=token,
        url_template=url,
        expires_at=expires_at,
        ctx=ctx,
    )
    return Batch(events=[event], ops=cred.issue_link_token(user.id, purpose, token_hash, ctx.now, expires_at))


async def resend_verification(w: WriteSide, user_id: UUID, ctx: Context) -> Written | None:
    """A new verification token (superseding older ones); None when the email is already verified."""

    def attempt() -> Written | None:
        user = user_agg.require_live(w.store.load_user(user_id, user_agg.project))
        if user.email_verified_at is not None:
            return None
        batch = _request_link(w, user, "email_verification", ctx)
        return commit(w, batch, batch.events[0].originator_id, batch.events[0].originator_version)

    return await w.run(with_retries, attempt)


async def forgot_password(w: WriteSide, raw_email: str, ctx: Context) -> None:
    """Issue a reset token for a live account (locked ones included); otherwise write nothing.

    Both paths run the same lookups; the edge pads the response to at least 250 ms.
    """
    email = canonical_email(raw_email)

    def attempt() -> None:
        index = w.store.load(email_index.index_id(w.pepper, email or raw_email), email_index.project)
        owner = index.owner if index is not None else None
        user = w.store.load_user(owner, user_agg.project) if owner is not None else None
        if email is None or user is None or not user.is_active:
            return
        commit(w, _request_link(w, user, "password_reset", ctx), user.id, user.version)

    await w.run(with_retries, attempt)


@dataclass(frozen=True)
class LiveLink:
    user: User
    token_hash: bytes


def _live_token(w: WriteSide, token: str, purpose: str, ctx: Context) -> LiveLink:
    if not token or len(token) > 512:
        raise InvalidToken()
    token_hash = hash_opaque_token(token)
    row = cred.link_token_row(w.store.datastore, token_hash)
    if (
        row is None
        or row["purpose"] != purpose
        or row["used_at"] is not None
        or row["superseded_at"] is not None
        or row["expires_at"] <= ctx.now
    ):
        raise InvalidToken()
    user = w.store.load_user(row["user_id"], user_agg.project)
    if user is None or not user.is_active:
        raise InvalidToken()
    return LiveLink(user, token_hash)


async def verify_email(w: WriteSide, token: str, ctx: Context) -> Written:
    def attempt() -> Written:
        live = _live_token(w, token, "email_verification", ctx)
        user_ctx = Context(now=ctx.now, metadata={**ctx.metadata, "actor_id": str(live.user.id), "actor_role": "user"})
        events = user_agg.verify_email(live.user, method="link", ctx=user_ctx)
        batch = Batch(events=list(events), ops=[cred.consume_link_token(live.token_hash, ctx.now)])
        return commit(w, batch, live.user.id, live.user.version + len(events))

    return await w.run(with_retries, attempt)


async def reset_password(w: WriteSide, token: str, new_password: str, ctx: Context) -> Written:
    """Token first (400 invalid_token, not consumed), then policy; then everything of §3.1.6 atomically."""
    live = await w.run(_live_token, w, token, "password_reset", ctx)
    password = normalize_password(new_password)
    c = w.config
    check_password_policy(
        password,
        field="new_password",
        email=live.user.email,
        min_length=c.password_min_length,
        max_length=c.password_max_length,
        blocklist=w.blocklist,
    )
    new_hash = await w.hasher.hash(password)
    key = email_index.index_id(w.pepper, live.user.email)

    def attempt() -> Written:
        fresh = _live_token(w, token, "password_reset", ctx)
        user_ctx = Context(now=ctx.now, metadata={**ctx.metadata, "actor_id": str(fresh.user.id), "actor_role": "user"})
        pending = Pending(fresh.user, user_agg.apply)
        pending.add([user_agg.change_password(fresh.user, method="reset", ctx=user_ctx)])
        pending.add(user_agg.verify_email(pending.state, method="password_reset", ctx=user_ctx))
        pending.add(user_agg.unlock(pending.state, method="password_reset", ctx=user_ctx))
        batch = Batch(events=pending.events)
        batch.ops += [
            cred.consume_link_token(fresh.token_hash, ctx.now),
            cred.set_password(fresh.user.id, new_hash, ctx.now),
            cred.invalidate_reset_tokens(fresh.user.id, ctx.now),
            cred.clear_failures(key),
        ]
        batch.extend(end_sessions(w, fresh.user.id, "password_reset", user_ctx))
        return commit(w, batch, fresh.user.id, pending.state.version)

    return await w.after_commit(await w.run(with_retries, attempt))

"""Registration (public) and the CLI's create-admin: claim the email, register, and usually log in."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from pandora_users.commands.base import WriteSide, Written, with_retries
from pandora_users.commands.sessions import Batch, commit, end_sessions
from pandora_users.domain import email_index, link
from pandora_users.domain import session as session_agg
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.domain.errors import UserAlreadyExists
from pandora_users.domain.fields import clean_name, require_email
from pandora_users.domain.user import User
from pandora_users.security.passwords import check_password_policy, normalize_password
from pandora_users.security.tokens import new_opaque_token
from pandora_users.store import credentials as cred


@dataclass(frozen=True)
class Registration:
    email: str
    password: str
    first_name: str
    last_name: str
    ip_address: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class SessionGrant:
    """A new or refreshed session: the caller turns it into an AuthResponse (tokens + user)."""

    user: User
    session_id: UUID
    audience: str
    refresh_token: str
    session_expires_at: datetime
    auth_time: datetime
    position: int | None


def _claim(w: WriteSide, email: str, user_id: UUID, ctx: Context) -> Batch:
    index_uuid = email_index.index_id(w.pepper, email)
    index = w.store.load(index_uuid, email_index.project)
    if index is not None and index.owner == user_id:
        raise _AlreadyOurs()
    return Batch(events=[email_index.claim(index, index_uuid=index_uuid, user_id=user_id, ctx=ctx)])


class _AlreadyOurs(Exception):
    """A re-run found the email claimed by this very command: its earlier commit did succeed."""


async def register(w: WriteSide, reg: Registration, ctx: Context) -> SessionGrant:
    """SPEC §3.1.1. The password is hashed before the uniqueness decision, so a taken email costs the same."""
    email = require_email(reg.email)
    first, last = clean_name(reg.first_name, "first_name"), clean_name(reg.last_name, "last_name")
    password = normalize_password(reg.password)
    c = w.config
    check_password_policy(
        password,
        field="password",
        email=email,
        min_length=c.password_min_length,
        max_length=c.password_max_length,
        blocklist=w.blocklist,
    )
    password_hash = await w.hasher.hash(password)
    user_id, session_id = uuid.uuid4(), uuid.uuid4()
    refresh_token, refresh_hash = new_opaque_token()
    link_token, link_hash = new_opaque_token()
    expires_at = ctx.now + timedelta(seconds=c.refresh_ttl)
    link_expires = ctx.now + timedelta(seconds=c.email_verification_token_ttl)
    user_ctx = Context(now=ctx.now, metadata={**ctx.metadata, "actor_id": str(user_id), "actor_role": "user"})

    def attempt() -> Written:
        try:
            batch = _claim(w, email, user_id, user_ctx)
        except _AlreadyOurs:
            return Written(user_id, 1, None)
        registered = user_agg.register(
            user_id, email=email, first_name=first, last_name=last, role="user", ctx=user_ctx
        )
        _key, wrapped = w.store.keys.new_key(user_id)
        batch.events += [
            registered,
            session_agg.log_in(
                session_id,
                user_id=user_id,
                email=email,
                audience="pandora-api",
                expires_at=expires_at,
                ip_address=reg.ip_address,
                user_agent=reg.user_agent,
                ctx=user_ctx,
            ),
            link.request(
                None,
                user_id=user_id,
                purpose="email_verification",
                email=email,
                first_name=first,
                token=link_token,
                url_template=c.email_verification_url,
                expires_at=link_expires,
                ctx=user_ctx,
            ),
        ]
        batch.ops += [
            cred.put_data_key(user_id, wrapped),
            cred.set_password(user_id, password_hash, ctx.now),
            *cred.open_session(
                cred.NewSession(
                    session_id,
                    user_id,
                    "pandora-api",
                    ctx.now,
                    expires_at,
                    reg.ip_address,
                    reg.user_agent[:512] if reg.user_agent else None,
                    refresh_hash,
                )
            ),
            *cred.issue_link_token(user_id, "email_verification", link_hash, ctx.now, link_expires),
        ]
        return commit(w, batch, user_id, 1)

    try:
        written = await w.run(with_retries, attempt)
    except BaseException:
        w.store.keys.forget(user_id)
        raise
    user = user_agg.apply(
        None,
        user_agg.register(user_id, email=email, first_name=first, last_name=last, role="user", ctx=user_ctx),
    )
    return SessionGrant(user, session_id, "pandora-api", refresh_token, expires_at, ctx.now, written.position)


@dataclass(frozen=True)
class AdminCreated:
    user_id: UUID
    promoted: bool
    position: int | None


async def create_admin(
    w: WriteSide,
    *,
    email: str,
    password: Callable[[], str],
    first_name: str,
    last_name: str,
    promote: bool,
    ctx: Context,
) -> AdminCreated:
    """SPEC §11 create-admin: a verified admin, or (--promote) an existing live user made admin.

    `password` is asked for only when a new account is created.
    """
    canonical = require_email(email)
    first, last = clean_name(first_name, "first_name"), clean_name(last_name, "last_name")
    index_uuid = email_index.index_id(w.pepper, canonical)
    index = await w.run(w.store.load, index_uuid, email_index.project)
    if index is not None and index.owner is not None:
        if not promote:
            raise UserAlreadyExists()
        return await _promote(w, index.owner, ctx)
    pw = normalize_password(password())
    c = w.config
    check_password_policy(
        pw,
        field="password",
        email=canonical,
        min_length=c.password_min_length,
        max_length=c.password_max_length,
        blocklist=w.blocklist,
    )
    password_hash = await w.hasher.hash(pw)
    user_id = uuid.uuid4()

    def attempt() -> Written:
        batch = _claim(w, canonical, user_id, ctx)
        registered = user_agg.register(
            user_id, email=canonical, first_name=first, last_name=last, role="admin", ctx=ctx
        )
        batch.events += [
            registered,
            *user_agg.verify_email(user_agg.apply(None, registered), method="admin_cli", ctx=ctx),
        ]
        _key, wrapped = w.store.keys.new_key(user_id)
        batch.ops += [cred.put_data_key(user_id, wrapped), cred.set_password(user_id, password_hash, ctx.now)]
        return commit(w, batch, user_id, 2)

    try:
        written = await w.run(with_retries, attempt)
    except BaseException:
        w.store.keys.forget(user_id)
        raise
    return AdminCreated(user_id, False, written.position)


async def _promote(w: WriteSide, user_id: UUID, ctx: Context) -> AdminCreated:
    def attempt() -> Written:
        user = user_agg.require_live(w.store.load_user(user_id, user_agg.project))
        batch = Batch(events=list(user_agg.change_role(user, "admin", ctx=ctx)))
        if batch.events:
            batch.extend(end_sessions(w, user_id, "role_changed", ctx))
        return commit(w, batch, user_id, user.version + len(batch.events))

    written = await w.after_commit(await w.run(with_retries, attempt))
    return AdminCreated(user_id, True, written.position)

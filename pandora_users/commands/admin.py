"""Administrative commands on any user (SPEC §4.2), also used by gRPC (KYC) and the CLI (erase)."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from pandora_users.commands.base import WriteSide, Written, with_retries
from pandora_users.commands.sessions import Batch, commit, end_sessions
from pandora_users.domain import email_index
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context, Pending
from pandora_users.domain.errors import UserNotFound
from pandora_users.domain.user import User
from pandora_users.store import credentials as cred

Decide = Callable[[User, Pending[User]], Batch]


def _load(w: WriteSide, user_id: UUID, *, live: bool) -> User:
    user = w.store.load_user(user_id, user_agg.project)
    if user is None or (live and not user.is_active):
        raise UserNotFound()
    return user


async def _command(
    w: WriteSide, user_id: UUID, decide: Decide, *, if_match: int | None, live: bool
) -> tuple[User, Written]:
    """Load, check If-Match, decide, commit; returns the new state and what was written."""

    def attempt() -> tuple[User, Written]:
        user = _load(w, user_id, live=live)
        user_agg.check_version(user, if_match)
        pending = Pending(user, user_agg.apply)
        batch = decide(user, pending)
        return pending.state, commit(w, batch, user_id, pending.state.version)

    user, written = await w.run(with_retries, attempt)
    return user, await w.after_commit(written)


async def change_kyc(
    w: WriteSide, user_id: UUID, status: str, *, if_match: int | None, ctx: Context
) -> tuple[User, Written]:
    def decide(user: User, pending: Pending[User]) -> Batch:
        pending.add(user_agg.change_kyc(user, status, self_service=False, ctx=ctx))
        return Batch(events=pending.events)

    return await _command(w, user_id, decide, if_match=if_match, live=True)


async def change_role(
    w: WriteSide, user_id: UUID, role: str, *, if_match: int | None, ctx: Context
) -> tuple[User, Written]:
    """A role change ends every session of the target, so old tokens stop working at once."""

    def decide(user: User, pending: Pending[User]) -> Batch:
        pending.add(user_agg.change_role(user, role, ctx=ctx))
        batch = Batch(events=pending.events)
        if batch.events:
            batch.extend(end_sessions(w, user_id, "role_changed", ctx))
        return batch

    return await _command(w, user_id, decide, if_match=if_match, live=True)


async def restore(w: WriteSide, user_id: UUID, *, if_match: int | None, ctx: Context) -> tuple[User, Written]:
    def decide(user: User, pending: Pending[User]) -> Batch:
        pending.add(user_agg.restore(user, ctx=ctx))
        return Batch(events=pending.events)

    return await _command(w, user_id, decide, if_match=if_match, live=False)


async def unlock(w: WriteSide, user_id: UUID, *, if_match: int | None, ctx: Context) -> tuple[User, Written]:
    """End a running lockout and reset the failure counter (`user.unlocked`, method `admin`)."""

    def decide(user: User, pending: Pending[User]) -> Batch:
        pending.add(user_agg.unlock(user, method="admin", ctx=ctx))
        batch = Batch(events=pending.events)
        if batch.events:
            batch.ops.append(cred.clear_failures(email_index.index_id(w.pepper, user.email)))
        return batch

    return await _command(w, user_id, decide, if_match=if_match, live=True)


async def erase(w: WriteSide, user_id: UUID, *, if_match: int | None, ctx: Context) -> tuple[User, Written]:
    """GDPR erasure by crypto-shredding (SPEC §9.5), in one transaction: sessions end, `user.erased`, the
    email index is released, the data key and every credential row are deleted."""

    def decide(user: User, pending: Pending[User]) -> Batch:
        if user.erased_at is not None:
            return Batch()
        batch = end_sessions(w, user_id, "account_erased", ctx)
        pending.add(user_agg.erase(user, ctx=ctx))
        batch.events += pending.events
        index_uuid = email_index.index_id(w.pepper, user.email)
        batch.events += email_index.release(w.store.load(index_uuid, email_index.project), user_id=user_id, ctx=ctx)
        batch.ops += [cred.clear_failures(index_uuid), *cred.erase_credentials(user_id)]
        return batch

    user, written = await _command(w, user_id, decide, if_match=if_match, live=False)
    if written.position is not None:
        w.store.keys.forget(user_id)
    return user, written

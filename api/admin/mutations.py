"""User administration, the writes (SPEC §4.2): KYC, role, restore, unlock, erase (delete is in users.py).

Every write takes `If-Match`, records the acting admin, the reason and the request in its events, and is
refused with 403 where SPEC §4 forbids an admin to act on their own account.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from litestar import Controller, Request, Response, patch, post, put

from api.admin.common import admin_user, refuse_own, target_user
from api.admin.docs import CONSISTENCY, ETAG, IF_MATCH, admin_docs
from api.admin.schemas import AdminUserDTO, Erased, EraseRequest, KycChange, Reason, RoleChange, reason_of
from api.deps import ApiDeps, committed, note, principal_context
from api.routes.common import authenticate, parse_if_match
from pandora_users.commands import admin
from pandora_users.commands.base import WriteSide, Written
from pandora_users.domain.context import Context
from pandora_users.domain.errors import FieldError, InvalidRequest
from pandora_users.domain.fields import clean_reason
from pandora_users.domain.user import User

Run = Callable[[WriteSide, UUID, int | None, Context], Awaitable[tuple[User, Written]]]


async def execute(
    request: Request[Any, Any, Any],
    deps: ApiDeps,
    raw_id: str,
    run: Run,
    *,
    reason: str | None,
    own_forbidden: bool,
    kind: str = "authz_change",
    reason_required: bool = False,
) -> tuple[User, Written, Context, str]:
    """Authenticate, parse, refuse self-actions, run the command in the admin's context; the actor too."""
    principal = await authenticate(request, deps)
    target = target_user(request, raw_id)
    if_match = parse_if_match(request)
    cleaned = clean_reason(reason)
    if reason_required and cleaned is None:
        raise InvalidRequest(details=[FieldError("reason", "is required")])
    if own_forbidden:
        refuse_own(principal, target)
    ctx = principal_context(request, principal).with_reason(cleaned)
    user, written = await run(deps.write, target, if_match, ctx)
    note(request, event_type=kind)
    return user, written, ctx, principal.actor


async def mutate(
    request: Request[Any, Any, Any], deps: ApiDeps, raw_id: str, run: Run, *, reason: str | None, own_forbidden: bool
) -> Response[AdminUserDTO]:
    """A write that answers with the user: AdminUserDTO, ETag and X-Consistency-Token."""
    user, written, ctx, actor = await execute(request, deps, raw_id, run, reason=reason, own_forbidden=own_forbidden)
    return await committed(deps, actor, admin_user(user, ctx.now), position=written.position, etag=user.version)


def _write(method: str, *codes: str, etag: bool = True, optional_body: bool = False) -> dict[str, Any]:
    headers = [ETAG, CONSISTENCY] if etag else [CONSISTENCY]
    return admin_docs(method, *codes, headers=headers, parameters=[IF_MATCH], optional_body=optional_body)


def _kyc(status: str) -> Run:
    return lambda w, target, if_match, ctx: admin.change_kyc(w, target, status, if_match=if_match, ctx=ctx)


def _role(role: str) -> Run:
    return lambda w, target, if_match, ctx: admin.change_role(w, target, role, if_match=if_match, ctx=ctx)


def _restore(w: WriteSide, target: UUID, if_match: int | None, ctx: Context) -> Awaitable[tuple[User, Written]]:
    return admin.restore(w, target, if_match=if_match, ctx=ctx)


def _unlock(w: WriteSide, target: UUID, if_match: int | None, ctx: Context) -> Awaitable[tuple[User, Written]]:
    return admin.unlock(w, target, if_match=if_match, ctx=ctx)


def _erase(w: WriteSide, target: UUID, if_match: int | None, ctx: Context) -> Awaitable[tuple[User, Written]]:
    return admin.erase(w, target, if_match=if_match, ctx=ctx)


class AdminUserActionsController(Controller):
    path = "/users/{id:str}"
    tags = ["admin: users"]

    @patch(
        "/kyc",
        summary="Set the KYC status (any transition; setting the current status writes nothing)",
        description="Soft-deleted or erased users: 404. `reason` goes into the event metadata.",
        **_write("PATCH", "invalid_kyc_status", "user_not_found", "version_conflict"),
    )
    async def kyc(
        self, request: Request[Any, Any, Any], deps: ApiDeps, id: str, data: KycChange
    ) -> Response[AdminUserDTO]:
        return await mutate(request, deps, id, _kyc(data.status), reason=reason_of(data), own_forbidden=True)

    @put(
        "/role",
        summary="Set the role; a change ends every session of the user (old tokens stop working at once)",
        **_write("PUT", "invalid_role", "user_not_found", "version_conflict"),
    )
    async def role(
        self, request: Request[Any, Any, Any], deps: ApiDeps, id: str, data: RoleChange
    ) -> Response[AdminUserDTO]:
        return await mutate(request, deps, id, _role(data.role), reason=reason_of(data), own_forbidden=True)

    @post(
        "/restore",
        status_code=200,
        summary="Restore a soft-deleted user (sessions do not come back); a live user is left as is",
        **_write("POST", "user_not_found", "user_erased", "version_conflict", optional_body=True),
    )
    async def restore(
        self, request: Request[Any, Any, Any], deps: ApiDeps, id: str, data: Reason | None = None
    ) -> Response[AdminUserDTO]:
        return await mutate(request, deps, id, _restore, reason=reason_of(data), own_forbidden=False)

    @post(
        "/unlock",
        status_code=200,
        summary="End a running lockout and reset the failure counter; a user who is not locked is left as is",
        **_write("POST", "user_not_found", "version_conflict", optional_body=True),
    )
    async def unlock(
        self, request: Request[Any, Any, Any], deps: ApiDeps, id: str, data: Reason | None = None
    ) -> Response[AdminUserDTO]:
        return await mutate(request, deps, id, _unlock, reason=reason_of(data), own_forbidden=False)

    @post(
        "/erase",
        status_code=200,
        summary="Erase a user for good (GDPR crypto-shredding, SPEC §9.5); the email is released",
        description="`reason` is required. Works on live and deleted users; an erased user is left as is.",
        **_write("POST", "user_not_found", "version_conflict", etag=False),
    )
    async def erase(
        self, request: Request[Any, Any, Any], deps: ApiDeps, id: str, data: EraseRequest
    ) -> Response[Erased]:
        user, written, _, actor = await execute(
            request, deps, id, _erase, reason=data.reason, own_forbidden=True, kind="user_erased", reason_required=True
        )
        return await committed(deps, actor, Erased("user erased", str(user.id)), position=written.position)

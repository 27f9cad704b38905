"""What the admin controllers share: the body hook, reads that wait, self-action refusal, user representations."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from litestar import Request, Response

from api.admin.schemas import AdminUserDTO
from api.auth import Principal
from api.body import strict_body
from api.deps import ApiDeps, note, with_headers
from api.routes.common import authenticate, parse_id
from pandora_users.domain.errors import Forbidden
from pandora_users.domain.user import User
from pandora_users.timestamps import rfc3339, rfc3339_or_none

OWN_ACCOUNT = "administrators cannot perform this action on their own account"


async def admin_body(request: Request[Any, Any, Any]) -> None:
    """SPEC §2.1 strict bodies, where an optional body (`data: X | None = None`) may also be left out."""
    param = request.route_handler.parsed_fn_signature.parameters.get("data")
    if param is not None and param.has_default and not await request.body():
        return
    await strict_body(request)


async def admin_read(
    request: Request[Any, Any, Any], deps: ApiDeps, projections: Sequence[str] = ()
) -> tuple[Principal, int]:
    """Authenticate, record the query parameter names, and wait for read-your-writes (SPEC §2.10).

    Without projections (reads of the credential or event store) there is nothing to wait for.
    """
    principal = await authenticate(request, deps)
    note(request, query_parameters=sorted(request.query_params.keys()))
    if not projections:
        return principal, 0
    header = request.headers.get("x-consistency-token")
    reached = await deps.consistency.wait(projections, header=header, actor=principal.actor, mark=principal.mark)
    return principal, reached


def read_response(body: Any, reached: int, *, etag: int | None = None) -> Response[Any]:
    return with_headers(Response(body), position=reached or None, etag=etag)


def target_user(request: Request[Any, Any, Any], raw_id: str) -> UUID:
    """The `{id}` path parameter, noted as the subject of this request's access-log entry."""
    target = parse_id(raw_id, "id")
    note(request, user_id=target, resource_type="user", resource_id=str(target))
    return target


def refuse_own(principal: Principal, target: UUID) -> None:
    if principal.user_id == target:
        raise Forbidden(OWN_ACCOUNT)


def admin_user(user: User, now: datetime) -> AdminUserDTO:
    """An AdminUserDTO from write-model state (command responses, `as_of`)."""
    return AdminUserDTO(
        id=str(user.id),
        email=user.email,
        first_name=user.first_name,
        last_name=user.last_name,
        role=user.role,
        kyc_status=user.kyc_status,
        email_verified=user.email_verified_at is not None,
        created_at=rfc3339(user.created_at),
        updated_at=rfc3339(user.updated_at),
        email_verified_at=rfc3339_or_none(user.email_verified_at),
        is_active=user.is_active,
        is_locked=user.is_locked(now),
        locked_until=rfc3339_or_none(user.locked_until),
        deleted_at=rfc3339_or_none(user.deleted_at),
        erased_at=rfc3339_or_none(user.erased_at),
        version=user.version,
    )

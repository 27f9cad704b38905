"""User administration, the reads (SPEC §4.2): list, search, get (also `?as_of=`), history, sessions; delete."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get

from api.admin import params as p
from api.admin.common import admin_read, admin_user, read_response, target_user
from api.admin.docs import CONSISTENCY, CONSISTENCY_TOKEN, ETAG, IF_MATCH, admin_docs
from api.admin.mutations import mutate
from api.admin.schemas import (
    AdminSessionList,
    AdminUserAsOfDTO,
    AdminUserDTO,
    AdminUserList,
    EventPage,
    Reason,
    reason_of,
)
from api.deps import ApiDeps
from pandora_users.commands import account
from pandora_users.commands.as_of import user_as_of
from pandora_users.commands.base import WriteSide, Written
from pandora_users.domain.context import Context
from pandora_users.domain.user import User
from pandora_users.timestamps import rfc3339
from projections.queries.events import user_history
from projections.queries.pagination import PageRequest
from projections.queries.sessions import user_sessions
from projections.queries.users import UserFilters, get_user, list_users, search_users

Q = p.Q


def _read(*codes: str, etag: bool = False) -> dict[str, Any]:
    """Docs of a read from the users or event_log read model (it waits for X-Consistency-Token)."""
    headers = [ETAG, CONSISTENCY] if etag else [CONSISTENCY]
    return admin_docs("GET", *codes, headers=headers, parameters=[CONSISTENCY_TOKEN])


class AdminUsersController(Controller):
    path = "/users"
    tags = ["admin: users"]

    @get("", summary="List users, newest first, with filters and the real total", **_read())
    async def index(
        self,
        request: Request[Any, Any, Any],
        deps: ApiDeps,
        limit: Q = p.LIMIT,
        offset: Q = p.OFFSET,
        cursor: Q = p.CURSOR,
        include_deleted: Q = p.INCLUDE_DELETED,
        kyc_status: Q = p.KYC_STATUS,
        role: Q = p.ROLE,
        created_from: Q = p.CREATED_FROM,
        created_to: Q = p.CREATED_TO,
    ) -> Response[AdminUserList]:
        _, reached = await admin_read(request, deps, ("users",))
        filters = UserFilters(
            kyc_status=kyc_status,
            role=role,
            include_deleted=p.parse_bool(include_deleted, "include_deleted"),
            created_from=p.parse_instant(created_from, "created_from"),
            created_to=p.parse_instant(created_to, "created_to"),
        )
        found = await list_users(deps.pool, filters, PageRequest.parse(limit, offset, cursor))
        return read_response(msgspec.convert(found, AdminUserList), reached)

    @get("/search", summary="Search email and names (case-insensitive substring; erased users never match)", **_read())
    async def search(
        self,
        request: Request[Any, Any, Any],
        deps: ApiDeps,
        query_: Q = p.QUERY,
        limit: Q = p.LIMIT,
        offset: Q = p.OFFSET,
        cursor: Q = p.CURSOR,
        include_deleted: Q = p.INCLUDE_DELETED,
    ) -> Response[AdminUserList]:
        _, reached = await admin_read(request, deps, ("users",))
        deleted = p.parse_bool(include_deleted, "include_deleted")
        page = PageRequest.parse(limit, offset, cursor)
        found = await search_users(deps.pool, query_ if query_ is not None else "", deleted, page)
        return read_response(msgspec.convert(found, AdminUserList), reached)

    @get(
        "/{id:str}",
        summary="A user (deleted and erased users too), or their state at `as_of`",
        description="Without `as_of`: from the users read model, with an ETag. With `as_of`: rebuilt from the event "
        "store using the events up to that instant (`version` is the version then; no ETag, no wait).",
        **_read("user_not_found", etag=True),
    )
    async def get_one(
        self, request: Request[Any, Any, Any], deps: ApiDeps, id: str, as_of: Q = p.AS_OF
    ) -> Response[AdminUserDTO | AdminUserAsOfDTO]:
        if as_of is not None:
            return await _as_of(request, deps, id, as_of)
        _, reached = await admin_read(request, deps, ("users",))
        row = await get_user(deps.pool, target_user(request, id))
        return read_response(AdminUserDTO(**row), reached, etag=row["version"])

    @delete(
        "/{id:str}",
        status_code=200,
        summary="Soft-delete a user: every session ends; a deleted or erased user is left as is",
        **admin_docs(
            "DELETE",
            "user_not_found",
            "version_conflict",
            headers=[ETAG, CONSISTENCY],
            parameters=[IF_MATCH],
            optional_body=True,
        ),
    )
    async def remove(
        self, request: Request[Any, Any, Any], deps: ApiDeps, id: str, data: Reason | None = None
    ) -> Response[AdminUserDTO]:
        return await mutate(request, deps, id, _delete, reason=reason_of(data), own_forbidden=True)

    @get(
        "/{id:str}/history",
        summary="Every published event of the user across aggregates (user, sessions, links), with metadata",
        **_read("user_not_found"),
    )
    async def history(
        self,
        request: Request[Any, Any, Any],
        deps: ApiDeps,
        id: str,
        limit: Q = p.LIMIT,
        offset: Q = p.OFFSET,
        cursor: Q = p.CURSOR,
        order: Q = p.ORDER,
        type_: Q = p.TYPES,
    ) -> Response[EventPage]:
        _, reached = await admin_read(request, deps, ("users", "event_log"))
        target = target_user(request, id)
        page = PageRequest.parse(limit, offset, cursor)
        found = await user_history(
            deps.pool, deps.store, target, page, order="desc" if order is None else order, types=type_
        )
        return read_response(msgspec.convert(found, EventPage), reached)

    @get(
        "/{id:str}/sessions",
        summary="The user's sessions, newest first (from the credential store, always current)",
        **admin_docs("GET", "user_not_found"),
    )
    async def sessions(
        self,
        request: Request[Any, Any, Any],
        deps: ApiDeps,
        id: str,
        status: Q = p.SESSION_STATUS,
        limit: Q = p.LIMIT,
        offset: Q = p.OFFSET,
        cursor: Q = p.CURSOR,
    ) -> AdminSessionList:
        await admin_read(request, deps)
        target = target_user(request, id)
        page = PageRequest.parse(limit, offset, cursor)
        idle = deps.write.config.session_idle_timeout
        found = await user_sessions(
            deps.pool, target, page, status="active" if status is None else status, idle_timeout=idle
        )
        return msgspec.convert(found, AdminSessionList)


async def _as_of(
    request: Request[Any, Any, Any], deps: ApiDeps, raw_id: str, raw: str
) -> Response[AdminUserDTO | AdminUserAsOfDTO]:
    await admin_read(request, deps)
    target = target_user(request, raw_id)
    moment = p.require_instant(raw, "as_of")
    dto = admin_user(await user_as_of(deps.write, target, moment), moment)
    fields = {name: getattr(dto, name) for name in dto.__struct_fields__}
    return Response(AdminUserAsOfDTO(**fields, as_of=rfc3339(moment)))


def _delete(w: WriteSide, target: UUID, if_match: int | None, ctx: Context) -> Awaitable[tuple[User, Written]]:
    return account.delete_user(w, target, if_match=if_match, ctx=ctx, must_be_live=False)

"""Session administration (SPEC §4.3): every live session, and revoking one by id."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get

from api.admin import params as p
from api.admin.common import admin_read
from api.admin.docs import CONSISTENCY, admin_docs
from api.admin.schemas import AdminSessionList, Reason, reason_of
from api.deps import ApiDeps, committed, note, principal_context
from api.openapi_docs import SESSION_ID
from api.routes.common import authenticate, parse_id
from api.schemas import MessageResponse
from pandora_users.commands import sessions
from pandora_users.domain.fields import clean_reason
from projections.queries.pagination import PageRequest
from projections.queries.sessions import live_sessions


class AdminSessionsController(Controller):
    path = "/sessions"
    tags = ["admin: sessions"]

    @get(
        "", summary="Every live session, newest first (from the credential store, always current)", **admin_docs("GET")
    )
    async def index(
        self,
        request: Request[Any, Any, Any],
        deps: ApiDeps,
        limit: p.Q = p.LIMIT,
        offset: p.Q = p.OFFSET,
        cursor: p.Q = p.CURSOR,
    ) -> AdminSessionList:
        await admin_read(request, deps)
        page = PageRequest.parse(limit, offset, cursor)
        found = await live_sessions(deps.pool, page, idle_timeout=deps.write.config.session_idle_timeout)
        return msgspec.convert(found, AdminSessionList)

    @delete(
        "/{session_id:str}",
        status_code=200,
        summary="End a session (reason admin_revoked); its refresh and access tokens stop working at once",
        **admin_docs("DELETE", "session_not_found", headers=[CONSISTENCY], parameters=[SESSION_ID], optional_body=True),
    )
    async def revoke(
        self, request: Request[Any, Any, Any], deps: ApiDeps, session_id: str, data: Reason | None = None
    ) -> Response[MessageResponse]:
        principal = await authenticate(request, deps)
        target = parse_id(session_id, "session_id")
        note(request, resource_type="session", resource_id=str(target), session_id=target)
        ctx = principal_context(request, principal).with_reason(clean_reason(reason_of(data)))
        written = await sessions.revoke_session(deps.write, target, "admin_revoked", ctx)
        owner = written.ended_sessions[0].user_id if written.ended_sessions else None
        note(request, event_type="authz_change", user_id=owner)
        body = MessageResponse("session revoked successfully")
        return await committed(deps, principal.actor, body, position=written.position)

"""The current user (SPEC §3.2) and their sessions (§3.3)."""

from __future__ import annotations

import functools
from typing import Any

from litestar import Controller, Request, Response, delete, get, patch, post, put

from api.body import strict_body
from api.deps import ApiDeps, committed, principal_context, row_dto, user_dto, with_headers
from api.openapi_docs import CONSISTENCY, CONSISTENCY_TOKEN, ETAG, IF_MATCH, SESSION_ID, route_docs
from api.routes.common import authenticate, parse_id, parse_if_match
from api.schemas import (
    KycRequest,
    MessageResponse,
    PasswordChangeRequest,
    ProfilePatch,
    ProfileReplace,
    RefreshRequest,
    SessionDTO,
    SessionList,
    UserDTO,
)
from pandora_users.commands import account, sessions
from pandora_users.domain.errors import FieldError, InvalidRequest, UserNotFound
from pandora_users.timestamps import rfc3339
from projections.queries.users import is_live

USERS = ("users",)
LIVE_SESSIONS = """
SELECT id, audience, ip_address, user_agent, created_at, last_used_at, expires_at FROM sessions
WHERE user_id = $1 AND ended_at IS NULL AND expires_at > now()
  AND ($2::float8 = 0 OR last_used_at + make_interval(secs => $2::float8) > now())
ORDER BY created_at DESC, id DESC
"""


class MeController(Controller):
    path = "/api/v1/users/me"
    tags = ["current user"]

    @get(
        "",
        summary="The current user (from the users read model, read-your-writes)",
        description="Waits (up to 2 s) until the read model reflects the caller's own recent writes and any "
        "`X-Consistency-Token` given; 503 `service_busy` when it does not in time.",
        **route_docs("GET", auth=True, headers=[ETAG, CONSISTENCY], parameters=[CONSISTENCY_TOKEN]),
    )
    async def me(self, request: Request[Any, Any, Any], deps: ApiDeps) -> Response[UserDTO]:
        principal = await authenticate(request, deps)
        header = request.headers.get("x-consistency-token")
        wanted = await deps.consistency.wanted(header=header, actor=principal.actor, mark=principal.mark)
        row, reached = await deps.users.row(
            principal.user_id, wanted, functools.partial(deps.consistency.wait_for, USERS)
        )
        if row is None or not is_live(row):
            raise UserNotFound()
        return with_headers(Response(row_dto(row)), position=reached or None, etag=row["version"])

    @put(
        "",
        before_request=strict_body,
        summary="Replace first and last name",
        description="Other fields (email, role, ...) are unknown fields: 400. Equal names change nothing.",
        **route_docs("PUT", "version_conflict", auth=True, headers=[ETAG, CONSISTENCY], parameters=[IF_MATCH]),
    )
    async def replace(self, request: Request[Any, Any, Any], data: ProfileReplace, deps: ApiDeps) -> Response[UserDTO]:
        return await _update(request, deps, data.first_name, data.last_name)

    @patch(
        "",
        before_request=strict_body,
        summary="Change first and/or last name",
        description="At least one of the names. Other fields are unknown fields: 400.",
        **route_docs("PATCH", "version_conflict", auth=True, headers=[ETAG, CONSISTENCY], parameters=[IF_MATCH]),
    )
    async def update(self, request: Request[Any, Any, Any], data: ProfilePatch, deps: ApiDeps) -> Response[UserDTO]:
        first = data.first_name if isinstance(data.first_name, str) else None
        last = data.last_name if isinstance(data.last_name, str) else None
        if first is None and last is None:
            raise InvalidRequest(details=[FieldError("body", "at least one of first_name, last_name is required")])
        return await _update(request, deps, first, last)

    @delete(
        "",
        before_request=strict_body,
        status_code=200,
        summary="Delete the account (soft delete)",
        description="Ends every session; later requests with the old access tokens get 404 `user_not_found`.",
        **route_docs("DELETE", auth=True, headers=[CONSISTENCY]),
    )
    async def remove(self, request: Request[Any, Any, Any], deps: ApiDeps) -> Response[MessageResponse]:
        principal = await authenticate(request, deps)
        _, written = await account.delete_user(
            deps.write, principal.user_id, if_match=None, ctx=principal_context(request, principal), must_be_live=True
        )
        return await committed(
            deps, principal.actor, MessageResponse("account deleted successfully"), position=written.position
        )

    @post(
        "/password",
        before_request=strict_body,
        status_code=200,
        summary="Change the password (ends every other session)",
        description="The current password is checked like a login: failures count towards the lockout.",
        **route_docs(
            "POST", "weak_password", "invalid_credentials", "account_locked", auth=True, headers=[CONSISTENCY]
        ),
    )
    async def password(
        self, request: Request[Any, Any, Any], data: PasswordChangeRequest, deps: ApiDeps
    ) -> Response[MessageResponse]:
        principal = await authenticate(request, deps)
        written = await account.change_password(
            deps.write,
            principal.user_id,
            principal.session_id,
            current=data.current_password,
            new=data.new_password,
            ctx=principal_context(request, principal),
        )
        return await committed(
            deps, principal.actor, MessageResponse("password changed successfully"), position=written.position
        )

    @patch(
        "/kyc",
        before_request=strict_body,
        summary="Resubmit KYC after a rejection",
        description="Only `pending`, and only while the status is `rejected`.",
        **route_docs(
            "PATCH",
            "invalid_kyc_status",
            "email_not_verified",
            "invalid_kyc_transition",
            auth=True,
            headers=[ETAG, CONSISTENCY],
        ),
    )
    async def kyc(self, request: Request[Any, Any, Any], data: KycRequest, deps: ApiDeps) -> Response[UserDTO]:
        principal = await authenticate(request, deps)
        user, written = await account.resubmit_kyc(
            deps.write, principal.user_id, data.status, principal_context(request, principal)
        )
        return await committed(deps, principal.actor, user_dto(user), position=written.position, etag=user.version)

    @get(
        "/sessions",
        summary="The caller's live sessions, newest first",
        description="Both audiences; unpaginated (at most SESSION_MAX_PER_USER).",
        **route_docs("GET", auth=True),
    )
    async def list_sessions(self, request: Request[Any, Any, Any], deps: ApiDeps) -> SessionList:
        principal = await authenticate(request, deps)
        rows = await deps.pool.fetch(LIVE_SESSIONS, principal.user_id, deps.write.config.session_idle_timeout)
        return SessionList([_session_dto(row, principal.session_id) for row in rows])

    @delete(
        "/sessions/{session_id:str}",
        before_request=strict_body,
        status_code=200,
        summary="End one of the caller's sessions",
        description="Another user's, an unknown or an ended session: 404 `session_not_found`.",
        **route_docs("DELETE", "session_not_found", auth=True, headers=[CONSISTENCY], parameters=[SESSION_ID]),
    )
    async def revoke(
        self, request: Request[Any, Any, Any], session_id: str, deps: ApiDeps
    ) -> Response[MessageResponse]:
        principal = await authenticate(request, deps)
        target = parse_id(session_id, "session_id")
        written = await sessions.revoke_own_session(
            deps.write, principal.user_id, target, principal_context(request, principal)
        )
        return await committed(
            deps, principal.actor, MessageResponse("session revoked successfully"), position=written.position
        )

    @post(
        "/logout",
        before_request=strict_body,
        status_code=200,
        summary="End the session of the given refresh token",
        description="The token must be the current refresh token of one of the caller's live sessions.",
        **route_docs("POST", "invalid_refresh_token", auth=True, headers=[CONSISTENCY]),
    )
    async def logout(
        self, request: Request[Any, Any, Any], data: RefreshRequest, deps: ApiDeps
    ) -> Response[MessageResponse]:
        principal = await authenticate(request, deps)
        written = await sessions.log_out(
            deps.write, principal.user_id, data.refresh_token, principal_context(request, principal)
        )
        return await committed(
            deps, principal.actor, MessageResponse("logged out successfully"), position=written.position
        )

    @post(
        "/logout-all",
        before_request=strict_body,
        status_code=200,
        summary="End every session of the caller, this one included",
        description="Any body is ignored. The calling access token stops working at once.",
        **route_docs("POST", auth=True, headers=[CONSISTENCY]),
    )
    async def logout_all(self, request: Request[Any, Any, Any], deps: ApiDeps) -> Response[MessageResponse]:
        principal = await authenticate(request, deps)
        written = await sessions.log_out_all(deps.write, principal.user_id, principal_context(request, principal))
        body = MessageResponse("logged out from all devices successfully")
        return await committed(deps, principal.actor, body, position=written.position)


async def _update(
    request: Request[Any, Any, Any], deps: ApiDeps, first: str | None, last: str | None
) -> Response[UserDTO]:
    principal = await authenticate(request, deps)
    if_match = parse_if_match(request)
    user, written = await account.update_profile(
        deps.write,
        principal.user_id,
        first_name=first,
        last_name=last,
        if_match=if_match,
        ctx=principal_context(request, principal),
    )
    return await committed(deps, principal.actor, user_dto(user), position=written.position, etag=user.version)


def _session_dto(row: Any, current: object) -> SessionDTO:
    return SessionDTO(
        id=str(row["id"]),
        audience=row["audience"],
        ip_address=row["ip_address"],
        user_agent=row["user_agent"],
        created_at=rfc3339(row["created_at"]),
        last_used_at=rfc3339(row["last_used_at"]),
        expires_at=rfc3339(row["expires_at"]),
        current=row["id"] == current,
    )

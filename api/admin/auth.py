"""Admin authentication (SPEC §4.1): login and refresh with `pandora-admin` tokens, logout."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post

from api.admin.docs import CONSISTENCY, admin_docs
from api.auth import ADMIN
from api.deps import ApiDeps, auth_response, committed, context, note, principal_context
from api.routes.common import authenticate, client
from api.schemas import AuthResponse, LoginRequest, MessageResponse, RefreshRequest
from pandora_users.commands import authentication, sessions
from pandora_users.domain.fields import canonical_email


class AdminAuthController(Controller):
    path = "/auth"
    tags = ["admin authentication"]

    @post(
        "/login",
        status_code=200,
        summary="Log in as an administrator (pandora-admin tokens)",
        description="Exactly the public login algorithm (rate limits under their own names, the same lockout and "
        "dummy hash). Valid credentials of a user who is not an admin give the same 401 as a wrong password.",
        **admin_docs("POST", "invalid_credentials", "account_locked", auth=False, headers=[CONSISTENCY]),
    )
    async def login(self, request: Request[Any, Any, Any], data: LoginRequest, deps: ApiDeps) -> Response[AuthResponse]:
        ip, agent = client(request)
        email_key = canonical_email(data.email) or data.email.strip().lower()[:254]
        await deps.limits(request, [("ip", ip or "unknown"), ("login-ip", ip or "unknown"), ("login-email", email_key)])
        note(request, actor_identifier=data.email[:254])
        attempt = authentication.LoginAttempt(data.email, data.password, ADMIN, ip, agent)
        outcome = await authentication.log_in(deps.write, attempt, context(request, actor_id=None, actor_role="admin"))
        grant = outcome.grant
        note(request, user_id=grant.user.id, session_id=grant.session_id)
        return await committed(deps, str(grant.user.id), auth_response(deps.tokens, grant), position=grant.position)

    @post(
        "/refresh",
        status_code=200,
        summary="Rotate the refresh token of an admin session",
        description="Only refresh tokens of pandora-admin sessions, of users who are still admins (SPEC §6.4).",
        **admin_docs("POST", "invalid_refresh_token", auth=False),
    )
    async def refresh(self, request: Request[Any, Any, Any], data: RefreshRequest, deps: ApiDeps) -> AuthResponse:
        ip, agent = client(request)
        await deps.limits(request, [("ip", ip or "unknown")])
        attempt = authentication.RefreshAttempt(data.refresh_token, ADMIN, ip, agent)
        grant = await authentication.refresh(deps.write, attempt, context(request, actor_id=None, actor_role="admin"))
        note(request, user_id=grant.user.id, session_id=grant.session_id, actor_identifier=grant.user.email)
        return auth_response(deps.tokens, grant)

    @post(
        "/logout",
        status_code=200,
        summary="End the session of the given refresh token (the caller's own, current token)",
        **admin_docs("POST", "invalid_refresh_token", headers=[CONSISTENCY]),
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

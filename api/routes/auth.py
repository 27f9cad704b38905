"""Public authentication endpoints (SPEC §3.1): register, login, refresh, email verification, reset."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar import Controller, Request, Response, post

from api.body import strict_body
from api.deps import ApiDeps, auth_response, committed, context, note
from api.openapi_docs import CONSISTENCY, message, route_docs
from api.request_state import state_of
from api.routes.common import authenticate, client
from api.schemas import (
    AuthResponse,
    ForgotPasswordRequest,
    LoginRequest,
    MessageResponse,
    RefreshRequest,
    RegisterRequest,
    ResetPasswordRequest,
    TokenRequest,
)
from pandora_users.commands import authentication, links, registration
from pandora_users.domain.fields import canonical_email


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["authentication"]

    @post(
        "/register",
        before_request=strict_body,
        status_code=201,
        summary="Register and log in",
        description="Creates the account (role `user`, KYC `pending`, email not verified) and its first session. "
        "The password policy is checked only when every other field is valid.",
        **route_docs("POST", "weak_password", "user_already_exists", headers=[CONSISTENCY]),
    )
    async def register(
        self, request: Request[Any, Any, Any], data: RegisterRequest, deps: ApiDeps
    ) -> Response[AuthResponse]:
        ip, agent = client(request)
        await deps.limits(request, [("ip", ip or "unknown"), ("register", ip or "unknown")])
        note(request, actor_identifier=data.email.strip()[:254])
        reg = registration.Registration(data.email, data.password, data.first_name, data.last_name, ip, agent)
        grant = await registration.register(deps.write, reg, context(request, actor_id=None, actor_role="user"))
        note(
            request,
            user_id=grant.user.id,
            session_id=grant.session_id,
            resource_type="user",
            resource_id=str(grant.user.id),
        )
        body = auth_response(deps.tokens, grant)
        return await committed(deps, str(grant.user.id), body, position=grant.position, status=201)

    @post(
        "/login",
        before_request=strict_body,
        status_code=200,
        summary="Log in with email and password",
        description="Every failure (unknown email, wrong password, deleted account, empty password) is the same "
        "401 `invalid_credentials`. Repeated failures lock the email out (423).",
        **route_docs("POST", "invalid_credentials", "account_locked", headers=[CONSISTENCY]),
    )
    async def login(self, request: Request[Any, Any, Any], data: LoginRequest, deps: ApiDeps) -> Response[AuthResponse]:
        ip, agent = client(request)
        email_key = canonical_email(data.email) or data.email.strip().lower()[:254]
        await deps.limits(request, [("ip", ip or "unknown"), ("login-ip", ip or "unknown"), ("login-email", email_key)])
        note(request, actor_identifier=data.email[:254])
        attempt = authentication.LoginAttempt(data.email, data.password, "pandora-api", ip, agent)
        outcome = await authentication.log_in(deps.write, attempt, context(request, actor_id=None, actor_role="user"))
        state_of(request)["after_failures"] = outcome.after_failures
        note(request, user_id=outcome.grant.user.id, session_id=outcome.grant.session_id)
        return await committed(
            deps, str(outcome.grant.user.id), auth_response(deps.tokens, outcome.grant), position=outcome.grant.position
        )

    @post(
        "/refresh",
        before_request=strict_body,
        status_code=200,
        summary="Rotate the refresh token",
        description="A new token pair for the same session. Presenting a rotated token again ends the session "
        "(reuse detection); send an `Idempotency-Key` so that a retry gets the same pair.",
        **route_docs("POST", "invalid_refresh_token"),
    )
    async def refresh(self, request: Request[Any, Any, Any], data: RefreshRequest, deps: ApiDeps) -> AuthResponse:
        ip, agent = client(request)
        await deps.limits(request, [("ip", ip or "unknown")])
        attempt = authentication.RefreshAttempt(data.refresh_token, "pandora-api", ip, agent)
        grant = await authentication.refresh(deps.write, attempt, context(request, actor_id=None, actor_role="user"))
        note(request, user_id=grant.user.id, session_id=grant.session_id, actor_identifier=grant.user.email)
        return auth_response(deps.tokens, grant)

    @post(
        "/verify-email",
        before_request=strict_body,
        status_code=200,
        summary="Verify the email address with a link token",
        **route_docs("POST", "invalid_token", headers=[CONSISTENCY]),
    )
    async def verify_email(
        self, request: Request[Any, Any, Any], data: TokenRequest, deps: ApiDeps
    ) -> Response[MessageResponse]:
        ip, _ = client(request)
        await deps.limits(request, [("ip", ip or "unknown")])
        written = await links.verify_email(deps.write, data.token, context(request, actor_id=None, actor_role="user"))
        return await committed(
            deps, str(written.id), MessageResponse("email verified successfully"), position=written.position
        )

    @post(
        "/verify-email/resend",
        before_request=strict_body,
        status_code=202,
        summary="Send a new verification email",
        description="No body (or `{}`). 202 when a new link was issued; 200 when the email is already verified.",
        **route_docs("POST", auth=True, headers=[CONSISTENCY], also={200: message("email already verified")}),
    )
    async def resend(self, request: Request[Any, Any, Any], deps: ApiDeps) -> Response[MessageResponse]:
        principal = await authenticate(request, deps)
        await deps.limits(request, [("verification", principal.actor)])
        ctx = context(request, actor_id=principal.actor, actor_role="user")
        written = await links.resend_verification(deps.write, principal.user_id, ctx)
        if written is None:
            return Response(MessageResponse("email already verified"), status_code=200)
        body = MessageResponse("verification email sent")
        return await committed(deps, principal.actor, body, position=written.position, status=202)

    @post(
        "/password/forgot",
        before_request=strict_body,
        status_code=202,
        summary="Request a password reset link",
        description="Always the same 202, whether or not an account exists for the email.",
        **route_docs("POST"),
    )
    async def forgot(
        self, request: Request[Any, Any, Any], data: ForgotPasswordRequest, deps: ApiDeps
    ) -> MessageResponse:
        started = time.monotonic()
        ip, _ = client(request)
        email_key = canonical_email(data.email) or data.email.strip().lower()[:254]
        await deps.limits(
            request, [("ip", ip or "unknown"), ("password-reset", ip or "unknown"), ("password-reset-email", email_key)]
        )
        await links.forgot_password(deps.write, data.email, context(request, actor_id=None, actor_role="anonymous"))
        await asyncio.sleep(max(0.0, deps.forgot_min_seconds - (time.monotonic() - started)))
        return MessageResponse("if an account exists for this email, a password reset link has been sent")

    @post(
        "/password/reset",
        before_request=strict_body,
        status_code=200,
        summary="Set a new password with a reset token",
        description="Ends every session of the user; does not log in.",
        **route_docs("POST", "invalid_token", "weak_password", headers=[CONSISTENCY]),
    )
    async def reset(
        self, request: Request[Any, Any, Any], data: ResetPasswordRequest, deps: ApiDeps
    ) -> Response[MessageResponse]:
        ip, _ = client(request)
        await deps.limits(request, [("ip", ip or "unknown")])
        ctx = context(request, actor_id=None, actor_role="user")
        written = await links.reset_password(deps.write, data.token, data.new_password, ctx)
        return await committed(
            deps, str(written.id), MessageResponse("password has been reset"), position=written.position
        )

"""The access log of SPEC §9.3 for the HTTP listeners: one entry per recorded request, off the request path.

Authentication endpoints are recorded whatever their outcome, the admin API always, and any response with
status ≥ 400 everywhere; system endpoints never. Handlers add facts to the request's state
(`api.request_state.state_of`).
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from api.auth import Principal
from pandora_users.audit.access_log import AccessLogEntry, AccessLogWriter
from pandora_users.audit.vocabulary import error_event_type
from pandora_users.observability import metrics as m
from pandora_users.observability import tracing
from pandora_users.observability.metrics import soon_counter

Scope = dict[str, Any]
SYSTEM = ("/health", "/ready", "/metrics", "/.well-known/jwks.json", "/openapi.json", "/swagger")
P = "/api/v1"
# (method, route template) -> event type on success, event type on failure
AUTH_ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", f"{P}/auth/register"): ("user_created", "user_created"),
    ("POST", f"{P}/auth/login"): ("authn_login_success", "authn_login_fail"),
    ("POST", f"{P}/admin/auth/login"): ("authn_admin_login_success", "authn_admin_login_fail"),
    ("POST", f"{P}/auth/refresh"): ("authn_token_created", "authn_token_invalid"),
    ("POST", f"{P}/admin/auth/refresh"): ("authn_token_created", "authn_token_invalid"),
    ("POST", f"{P}/users/me/logout"): ("session_logout", "session_logout"),
    ("POST", f"{P}/admin/auth/logout"): ("session_logout", "session_logout"),
    ("POST", f"{P}/users/me/logout-all"): ("session_logout", "session_logout"),
    ("DELETE", f"{P}/users/me/sessions/{{session_id}}"): ("session_logout", "session_logout"),
    ("POST", f"{P}/auth/verify-email"): ("authn_email_verification", "authn_email_verification"),
    ("POST", f"{P}/auth/verify-email/resend"): ("authn_email_verification", "authn_email_verification"),
    ("POST", f"{P}/auth/password/forgot"): ("authn_password_reset_request", "authn_password_reset_request"),
    ("POST", f"{P}/auth/password/reset"): ("authn_password_reset", "authn_password_reset"),
    ("POST", f"{P}/users/me/password"): ("authn_password_change", "authn_password_change"),
}


def event_type(method: str, route: str, status: int, state: dict[str, Any], listener: str) -> str | None:
    """The entry's type, or None when this request is not recorded."""
    audit = state.get("audit", {})
    if status == 429:
        return "excess_rate_limit_exceeded"
    if status >= 500:
        return "sys_error"
    if "event_type" in audit:
        return str(audit["event_type"])
    pair = AUTH_ROUTES.get((method, route))
    if pair is not None:
        if route.endswith("/login") and status == 423:
            return "authn_login_lock"
        if route.endswith("/login") and audit.get("lockout_started"):
            return "authn_login_fail_max"
        if route.endswith("/auth/login") and status < 400 and state.get("after_failures"):
            return "authn_login_successafterfail"
        if route.endswith("/refresh") and audit.get("reuse"):
            return "authn_token_reuse"
        return pair[0] if status < 400 else pair[1]
    if listener == "admin" and status < 400:
        return "authz_admin"
    return error_event_type(status, listener)


class AccessLogMiddleware:
    def __init__(self, app: Any, writer: AccessLogWriter, *, listener: str) -> None:
        self.app, self.writer, self.listener = app, writer, listener

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(SYSTEM) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = scope.get("state", {}).get("rate_headers") or {}
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.lower().encode(), str(v).encode()) for k, v in extra.items() if k.lower() != "retry-after"),
                ]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            entry = self._entry(scope, status, (time.perf_counter() - started) * 1000)
            if entry is not None:
                count_business_metrics(entry, scope.get("state", {}))
                await self.writer.record(entry)

    def _entry(self, scope: Scope, status: int, duration_ms: float) -> AccessLogEntry | None:
        state = scope.get("state", {})
        route = scope.get("path_template") or scope["path"]
        kind = event_type(scope["method"], route, status, state, self.listener)
        if kind is None:
            return None
        audit: dict[str, Any] = state.get("audit", {})
        principal: Principal | None = state.get("principal")
        actor_type = "anonymous" if principal is None else ("admin" if self.listener == "admin" else "user")
        metadata = {k: v for k, v in audit.items() if k in ("lockout_failures", "limit", "query_parameters", "reason")}
        return AccessLogEntry.of(
            kind,
            status_code=status,
            listener=self.listener,
            actor_type=actor_type,
            method=scope["method"],
            route=route,
            user_id=_uuid(audit.get("user_id") or (principal.user_id if principal else None)),
            actor_id=principal.actor if principal else audit.get("actor_id"),
            actor_identifier=(principal.email if principal else audit.get("actor_identifier")) or "anonymous",
            resource_type=audit.get("resource_type"),
            resource_id=audit.get("resource_id"),
            session_id=_uuid(audit.get("session_id") or (principal.session_id if principal else None)),
            ip_address=state.get("client_ip"),
            user_agent=_header(scope, b"user-agent"),
            request_id=state.get("request_id"),
            trace_id=tracing.current_trace_id(),
            failure_reason=state.get("error_code") if status >= 400 else None,
            duration_ms=round(duration_ms),
            metadata=metadata,
        )


def count_business_metrics(entry: AccessLogEntry, state: dict[str, Any]) -> None:
    """Logins, registrations, refreshes, logouts, lockouts and reuse, from the entry's classification."""
    kind, audit = entry.event_type, state.get("audit", {})
    audience = "pandora-admin" if entry.listener == "admin" else "pandora-api"
    login = {
        "authn_login_success": "success",
        "authn_login_successafterfail": "success",
        "authn_admin_login_success": "success",
        "authn_login_lock": "locked",
    }
    if kind in login:
        soon_counter(m.logins, audience, login[kind]).add()
    elif kind in ("authn_login_fail", "authn_login_fail_max", "authn_admin_login_fail"):
        reason = "invalid_credentials" if entry.failure_reason == "invalid_credentials" else "failure"
        soon_counter(m.logins, audience, reason).add()
    elif kind == "user_created":
        soon_counter(m.registrations, "success" if entry.status == "success" else "failure").add()
    elif kind == "authn_token_created":
        soon_counter(m.token_refresh, audience, "success").add()
    elif kind in ("authn_token_invalid", "authn_token_reuse"):
        soon_counter(m.token_refresh, audience, "reuse" if kind == "authn_token_reuse" else "invalid").add()
    elif kind == "session_logout" and entry.status == "success":
        soon_counter(m.logouts, "all" if entry.route.endswith("logout-all") else "single").add()
    elif kind == "excess_rate_limit_exceeded":
        soon_counter(m.rate_limit_rejections, audit.get("limit") or "unknown").add()
    if kind == "authn_token_reuse":
        m.token_reuse.inc()
    if audit.get("lockout_started"):
        m.account_lockouts.inc()


def _uuid(value: Any) -> UUID | None:
    if value is None or isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None

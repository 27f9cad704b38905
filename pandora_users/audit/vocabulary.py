"""The access-log vocabulary of SPEC §9.3 as data: event types (OWASP names), categories, severities.

Helpers derive the columns that follow from others: `status` from the status code, the severity of the
types whose severity depends on the outcome, `is_sensitive`, and the event type of an otherwise
unclassified error response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CATEGORIES: Final = frozenset(
    {"authentication", "authorization", "data_access", "data_modification", "security", "compliance"}
)
SEVERITIES: Final = ("info", "warning", "high", "critical")
STATUSES: Final = frozenset({"success", "failure", "error"})
LISTENERS: Final = frozenset({"public", "admin", "grpc"})
ACTOR_TYPES: Final = frozenset({"user", "admin", "service", "anonymous"})
SENSITIVE_CATEGORIES: Final = frozenset({"authentication", "security", "compliance"})

# gRPC status codes that matter here (grpc.StatusCode numbers).
GRPC_OK, GRPC_PERMISSION_DENIED, GRPC_INTERNAL, GRPC_UNAVAILABLE, GRPC_UNAUTHENTICATED = 0, 7, 13, 14, 16


@dataclass(frozen=True)
class EventType:
    """One event type. `failure_severity` is set for the types whose severity depends on the outcome."""

    name: str
    category: str
    severity: str
    failure_severity: str | None = None


EVENT_TYPES: Final[dict[str, EventType]] = {
    e.name: e
    for e in (
        EventType("authn_login_success", "authentication", "info"),
        EventType("authn_login_successafterfail", "authentication", "info"),
        EventType("authn_login_fail", "authentication", "warning"),
        EventType("authn_login_fail_max", "security", "high"),
        EventType("authn_login_lock", "security", "high"),
        EventType("authn_admin_login_success", "authentication", "high"),
        EventType("authn_admin_login_fail", "authentication", "high"),
        EventType("user_created", "authentication", "info"),
        EventType("authn_token_created", "authentication", "info"),
        EventType("authn_token_invalid", "authentication", "warning"),
        EventType("authn_token_reuse", "security", "critical"),
        EventType("session_logout", "authentication", "info"),
        EventType("authn_password_change", "authentication", "high", failure_severity="warning"),
        EventType("authn_password_reset_request", "authentication", "warning"),
        EventType("authn_password_reset", "authentication", "high"),
        EventType("authn_email_verification", "authentication", "info"),
        EventType("authz_admin", "data_access", "info"),
        EventType("authz_change", "data_modification", "high"),
        EventType("user_erased", "compliance", "critical"),
        # warning for 401 / UNAUTHENTICATED, high for 403 / PERMISSION_DENIED (see `severity`).
        EventType("authz_fail", "authorization", "warning"),
        EventType("excess_rate_limit_exceeded", "security", "warning"),
        EventType("input_validation_fail", "data_access", "info"),
        EventType("sys_error", "security", "high"),
    )
}


def event_type(name: str) -> EventType:
    """The event type called `name`; a name outside the vocabulary is a programming error (KeyError)."""
    return EVENT_TYPES[name]


def status_of(status_code: int, listener: str) -> str:
    """`success`, `failure` or `error` from an HTTP status, or from a gRPC code on the `grpc` listener."""
    if listener == "grpc":
        if status_code == GRPC_OK:
            return "success"
        return "error" if status_code in (GRPC_INTERNAL, GRPC_UNAVAILABLE) else "failure"
    if status_code >= 500:
        return "error"
    return "failure" if status_code >= 400 else "success"


def severity(name: str, status_code: int, listener: str) -> str:
    """The severity of an entry: fixed per type, except password change (by outcome) and authz_fail (401/403)."""
    kind = EVENT_TYPES[name]
    if name == "authz_fail":
        forbidden = status_code == (GRPC_PERMISSION_DENIED if listener == "grpc" else 403)
        return "high" if forbidden else "warning"
    if kind.failure_severity is not None and status_of(status_code, listener) != "success":
        return kind.failure_severity
    return kind.severity


def is_sensitive(category: str, listener: str, actor_type: str) -> bool:
    """True for the authentication, security and compliance categories, and for every admin entry."""
    return category in SENSITIVE_CATEGORIES or listener == "admin" or actor_type == "admin"


def error_event_type(status_code: int, listener: str) -> str | None:
    """The generic event type of a failed request that no endpoint-specific type covers (None when 2xx/3xx)."""
    if listener == "grpc":
        if status_code in (GRPC_UNAUTHENTICATED, GRPC_PERMISSION_DENIED):
            return "authz_fail"
        if status_code == GRPC_OK:
            return None
        return "sys_error" if status_code in (GRPC_INTERNAL, GRPC_UNAVAILABLE) else "input_validation_fail"
    if status_code < 400:
        return None
    if status_code in (401, 403):
        return "authz_fail"
    if status_code == 429:
        return "excess_rate_limit_exceeded"
    return "sys_error" if status_code >= 500 else "input_validation_fail"

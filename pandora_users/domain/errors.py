"""Domain errors: one kind per stable error code, translated once at each edge.

The table below is the single mapping from an error code to its HTTP status and gRPC status name;
the HTTP and gRPC edges both read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

# code -> (HTTP status, gRPC status name, default message)
ERROR_TABLE: dict[str, tuple[int, str, str]] = {
    "invalid_request": (400, "INVALID_ARGUMENT", "invalid request"),
    "weak_password": (400, "INVALID_ARGUMENT", "password does not meet the policy"),
    "invalid_kyc_status": (400, "INVALID_ARGUMENT", "invalid KYC status"),
    "invalid_role": (400, "INVALID_ARGUMENT", "invalid role"),
    "invalid_token": (400, "INVALID_ARGUMENT", "invalid or expired token"),
    "invalid_idempotency_key": (400, "INVALID_ARGUMENT", "invalid idempotency key"),
    "unauthorized": (401, "UNAUTHENTICATED", "unauthorized"),
    "invalid_credentials": (401, "UNAUTHENTICATED", "invalid email or password"),
    "invalid_refresh_token": (401, "UNAUTHENTICATED", "invalid or expired refresh token"),
    "forbidden": (403, "PERMISSION_DENIED", "admin access required"),
    "email_not_verified": (403, "FAILED_PRECONDITION", "email address is not verified"),
    "user_not_found": (404, "NOT_FOUND", "user not found"),
    "session_not_found": (404, "NOT_FOUND", "session not found"),
    "not_found": (404, "NOT_FOUND", "not found"),
    "method_not_allowed": (405, "UNIMPLEMENTED", "method not allowed"),
    "user_already_exists": (409, "ALREADY_EXISTS", "user with this email already exists"),
    "invalid_kyc_transition": (
        409,
        "FAILED_PRECONDITION",
        "KYC status can only be resubmitted after a rejection",
    ),
    "user_erased": (409, "FAILED_PRECONDITION", "user has been erased"),
    "request_in_progress": (409, "ABORTED", "a request with this idempotency key is in progress"),
    "version_conflict": (412, "FAILED_PRECONDITION", "the resource has been modified"),
    "payload_too_large": (413, "RESOURCE_EXHAUSTED", "request body too large"),
    "unsupported_media_type": (415, "INVALID_ARGUMENT", "content type must be application/json"),
    "idempotency_key_reused": (
        422,
        "INVALID_ARGUMENT",
        "idempotency key already used with a different request",
    ),
    "account_locked": (423, "PERMISSION_DENIED", "account temporarily locked"),
    "rate_limit_exceeded": (429, "RESOURCE_EXHAUSTED", "too many requests, please try again later"),
    "internal_error": (500, "INTERNAL", "an internal error occurred"),
    "service_busy": (503, "UNAVAILABLE", "service busy, please retry"),
    "service_unavailable": (503, "UNAVAILABLE", "service unavailable"),
}


@dataclass(frozen=True)
class FieldError:
    """One entry of an error's `details`: which field, and what is wrong with it."""

    field: str
    message: str


@dataclass
class DomainError(Exception):
    """Base of every error the service reports to a caller. `code` is stable; `message` is for humans."""

    message: str = ""
    details: list[FieldError] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # Facts for the access log (never part of the response body), e.g. {"lockout_started": True}.
    audit: dict[str, Any] = field(default_factory=dict, repr=False)

    code: ClassVar[str] = "internal_error"

    def __post_init__(self) -> None:
        if not self.message:
            self.message = ERROR_TABLE[self.code][2]
        super().__init__(self.message)

    @property
    def http_status(self) -> int:
        return ERROR_TABLE[self.code][0]

    @property
    def grpc_status(self) -> str:
        return ERROR_TABLE[self.code][1]


class InvalidRequest(DomainError):
    code = "invalid_request"


class WeakPassword(DomainError):
    code = "weak_password"


class InvalidKycStatus(DomainError):
    code = "invalid_kyc_status"


class InvalidRole(DomainError):
    code = "invalid_role"


class InvalidToken(DomainError):
    code = "invalid_token"


class Unauthorized(DomainError):
    code = "unauthorized"


class InvalidCredentials(DomainError):
    code = "invalid_credentials"


class InvalidRefreshToken(DomainError):
    code = "invalid_refresh_token"


class Forbidden(DomainError):
    code = "forbidden"


class EmailNotVerified(DomainError):
    code = "email_not_verified"


class UserNotFound(DomainError):
    code = "user_not_found"


class SessionNotFound(DomainError):
    code = "session_not_found"


class UserAlreadyExists(DomainError):
    code = "user_already_exists"


class InvalidKycTransition(DomainError):
    code = "invalid_kyc_transition"


class UserErased(DomainError):
    code = "user_erased"


class VersionConflict(DomainError):
    """If-Match did not equal the current version; `extra` carries `current_version`."""

    code = "version_conflict"


class AccountLocked(DomainError):
    """The email is locked out; `extra` carries `retry_after_seconds`."""

    code = "account_locked"


class RateLimitExceeded(DomainError):
    code = "rate_limit_exceeded"


class ServiceBusy(DomainError):
    """Load shedding (hashing queue full, consistency wait timed out, retries exhausted)."""

    code = "service_busy"


class ServiceUnavailable(DomainError):
    code = "service_unavailable"

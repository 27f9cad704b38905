"""Request and response bodies of the public API (msgspec structs; documented in OpenAPI).

The `Annotated` metadata below is documentation only: it feeds the OpenAPI document (descriptions, formats,
enums, examples) and is never enforced by msgspec. The field rules of SPEC §2.7 live in the domain.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from pandora_users.domain.errors import ERROR_TABLE


def doc(description: str | None = None, *, examples: list[Any] | None = None, **schema: Any) -> msgspec.Meta:
    """OpenAPI-only metadata: a description, examples and extra schema keywords (`format`, `enum`, ...)."""
    extra: dict[str, Any] = {"extra": schema} if schema else {}
    if description:
        extra["description"] = description
    if examples:
        extra["examples"] = examples
    return msgspec.Meta(extra_json_schema=extra)


Uuid = Annotated[str, doc(format="uuid")]
Timestamp = Annotated[str, doc("RFC 3339 in UTC with six fractional digits and `Z`", format="date-time")]
Email = Annotated[str, doc("canonical form (trimmed, NFKC, lower-case)", format="email")]
Role = Annotated[str, doc(enum=["user", "admin"])]
KycStatus = Annotated[str, doc(enum=["pending", "verified", "rejected"])]
Audience = Annotated[str, doc(enum=["pandora-api", "pandora-admin"])]
NAME_RULE = "trimmed, NFC; 1..100 code points; no control or bidirectional-override characters"
Name = Annotated[str, doc(NAME_RULE, examples=["Ann"], min_length=1)]
NewPassword = Annotated[
    str, doc("NFKC, never trimmed; must satisfy the password policy (SPEC §7.1)", examples=["a long passphrase 1"])
]
AnyEmail = Annotated[str, doc("any string is accepted and evaluated", examples=["ann@example.com"])]
LinkToken = Annotated[str, doc("the link token from the email (43 characters, base64url)")]


class Request(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base of request bodies: unknown fields are refused."""


class RegisterRequest(Request, frozen=True):
    """A new account; every field is required (unknown fields give 400)."""

    email: Annotated[
        str, doc("trimmed, NFKC, lower-cased, then checked (SPEC §2.7)", examples=["ann@example.com"], format="email")
    ]
    password: NewPassword
    first_name: Annotated[str, doc(NAME_RULE, examples=["Ann"], min_length=1)]
    last_name: Annotated[str, doc(NAME_RULE, examples=["Lee"], min_length=1)]


class LoginRequest(Request, frozen=True):
    email: AnyEmail
    password: Annotated[str, doc("never validated: any string, U+0000 included, is evaluated")]


class RefreshRequest(Request, frozen=True):
    refresh_token: Annotated[str, doc("the current refresh token of the session")]


class TokenRequest(Request, frozen=True):
    token: LinkToken


class ForgotPasswordRequest(Request, frozen=True):
    email: AnyEmail


class ResetPasswordRequest(Request, frozen=True):
    token: LinkToken
    new_password: NewPassword


class ProfileReplace(Request, frozen=True):
    """Full replacement of the names."""

    first_name: Name
    last_name: Name


class ProfilePatch(Request, frozen=True):
    """At least one of the names."""

    first_name: Name | UnsetType = UNSET
    last_name: Name | UnsetType = UNSET


class PasswordChangeRequest(Request, frozen=True):
    current_password: Annotated[str, doc("checked like a login (failures count towards the lockout)")]
    new_password: NewPassword


class KycRequest(Request, frozen=True):
    status: Annotated[str, doc("must be `pending` (resubmission after a rejection)", examples=["pending"])]


class UserDTO(msgspec.Struct, frozen=True):
    id: Uuid
    email: Email
    first_name: str
    last_name: str
    role: Role
    kyc_status: KycStatus
    email_verified: bool
    created_at: Timestamp
    updated_at: Annotated[str, doc("time of the latest user-aggregate event", format="date-time")]


class AuthResponse(msgspec.Struct, frozen=True):
    access_token: Annotated[str, doc("JWT, audience `pandora-api`")]
    refresh_token: Annotated[str, doc("opaque; rotated on every refresh")]
    token_type: Annotated[str, doc(enum=["Bearer"])]
    expires_in: Annotated[int, doc("seconds until the access token expires", minimum=1)]
    access_token_expires_at: Timestamp
    refresh_token_expires_at: Annotated[str, doc("absolute end of the session", format="date-time")]
    expires_at: Annotated[str, doc("same as `refresh_token_expires_at`", format="date-time")]
    session_id: Uuid
    user: UserDTO


class SessionDTO(msgspec.Struct, frozen=True):
    id: Uuid
    audience: Audience
    ip_address: str | None
    user_agent: str | None
    created_at: Timestamp
    last_used_at: Timestamp
    expires_at: Timestamp
    current: Annotated[bool, doc("true for the session of the calling token")]


class SessionList(msgspec.Struct, frozen=True):
    sessions: list[SessionDTO]


class MessageResponse(msgspec.Struct, frozen=True):
    message: str


class FieldErrorDTO(msgspec.Struct, frozen=True):
    field: Annotated[str, doc("a body field, a path or query parameter, or a header")]
    message: str


class ErrorResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """The one error shape of every HTTP error (SPEC §2.6)."""

    error: Annotated[str, doc("stable snake-case code; branch on this", enum=sorted(ERROR_TABLE))]
    message: Annotated[str, doc("human-readable English; never branch on it")]
    code: Annotated[str, doc("`error` in upper case", enum=sorted(c.upper() for c in ERROR_TABLE))]
    trace_id: Annotated[str, doc("present when tracing is enabled", pattern="^[0-9a-f]{32}$")] | UnsetType = UNSET
    details: list[FieldErrorDTO] | UnsetType = UNSET
    retry_after_seconds: Annotated[int, doc("on 423, 429 and 503", minimum=1)] | UnsetType = UNSET
    current_version: Annotated[int, doc("on 412: the current version", minimum=0)] | UnsetType = UNSET

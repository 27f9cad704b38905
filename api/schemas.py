"""Request and response bodies of the public API (msgspec structs; documented in OpenAPI)."""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType


class Request(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base of request bodies: unknown fields are refused."""


class RegisterRequest(Request, frozen=True):
    email: str
    password: str
    first_name: str
    last_name: str


class LoginRequest(Request, frozen=True):
    email: str
    password: str


class RefreshRequest(Request, frozen=True):
    refresh_token: str


class TokenRequest(Request, frozen=True):
    token: str


class ForgotPasswordRequest(Request, frozen=True):
    email: str


class ResetPasswordRequest(Request, frozen=True):
    token: str
    new_password: str


class ProfileReplace(Request, frozen=True):
    first_name: str
    last_name: str


class ProfilePatch(Request, frozen=True):
    first_name: str | UnsetType = UNSET
    last_name: str | UnsetType = UNSET


class PasswordChangeRequest(Request, frozen=True):
    current_password: str
    new_password: str


class KycRequest(Request, frozen=True):
    status: str


class UserDTO(msgspec.Struct, frozen=True):
    id: str
    email: str
    first_name: str
    last_name: str
    role: str
    kyc_status: str
    email_verified: bool
    created_at: str
    updated_at: str


class AuthResponse(msgspec.Struct, frozen=True):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int
    access_token_expires_at: str
    refresh_token_expires_at: str
    expires_at: str
    session_id: str
    user: UserDTO


class SessionDTO(msgspec.Struct, frozen=True):
    id: str
    audience: str
    ip_address: str | None
    user_agent: str | None
    created_at: str
    last_used_at: str
    expires_at: str
    current: bool


class SessionList(msgspec.Struct, frozen=True):
    sessions: list[SessionDTO]


class MessageResponse(msgspec.Struct, frozen=True):
    message: str


class FieldErrorDTO(msgspec.Struct, frozen=True):
    field: str
    message: str


class ErrorResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    error: str
    message: str
    code: str
    trace_id: str | UnsetType = UNSET
    details: list[FieldErrorDTO] | UnsetType = UNSET
    retry_after_seconds: int | UnsetType = UNSET
    current_version: int | UnsetType = UNSET

"""Request and response bodies of the admin API (SPEC §2.13, §4), documented in its OpenAPI document."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from api.schemas import Request


class KycChange(Request, frozen=True):
    status: str
    reason: str | UnsetType = UNSET


class RoleChange(Request, frozen=True):
    role: str
    reason: str | UnsetType = UNSET


class Reason(Request, frozen=True):
    """The optional body of delete, restore, unlock and session revocation."""

    reason: str | UnsetType = UNSET


class EraseRequest(Request, frozen=True):
    reason: str


def reason_of(body: Reason | KycChange | RoleChange | EraseRequest | None) -> str | None:
    if body is None or isinstance(body.reason, UnsetType):
        return None
    return body.reason


class AdminUserDTO(msgspec.Struct, frozen=True):
    id: str
    email: str
    first_name: str
    last_name: str
    role: str
    kyc_status: str
    email_verified: bool
    created_at: str
    updated_at: str
    email_verified_at: str | None
    is_active: bool
    is_locked: bool
    locked_until: str | None
    deleted_at: str | None
    erased_at: str | None
    version: int


class AdminUserAsOfDTO(AdminUserDTO, frozen=True):
    """The state of a user at `as_of`, rebuilt from the event store (no ETag)."""

    as_of: str


class AdminUserList(msgspec.Struct, frozen=True):
    users: list[AdminUserDTO]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


class AdminSessionDTO(msgspec.Struct, frozen=True):
    id: str
    audience: str
    ip_address: str | None
    user_agent: str | None
    created_at: str
    last_used_at: str
    expires_at: str
    user_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    status: str
    ended_at: str | None
    end_reason: str | None


class AdminSessionList(msgspec.Struct, frozen=True):
    sessions: list[AdminSessionDTO]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


class EventDTO(msgspec.Struct, frozen=True):
    position: int
    event_id: str
    event_type: str
    user_id: str
    aggregate_id: str
    aggregate_version: int
    timestamp: str
    schema_version: int
    payload: dict[str, Any]
    metadata: dict[str, str]


class EventPage(msgspec.Struct, frozen=True):
    """A user's history (paginated)."""

    events: list[EventDTO]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


class EventLog(msgspec.Struct, frozen=True):
    """A slice of the global event log, ascending by position."""

    events: list[EventDTO]
    next_after_position: int | None
    head_position: int


class AccessLogEntryDTO(msgspec.Struct, frozen=True):
    id: str
    created_at: str
    event_type: str
    category: str
    severity: str
    status: str
    status_code: int
    listener: str
    method: str
    route: str
    user_id: str | None
    actor_type: str
    actor_id: str | None
    actor_identifier: str
    resource_type: str | None
    resource_id: str | None
    session_id: str | None
    ip_address: str | None
    user_agent: str | None
    request_id: str | None
    trace_id: str | None
    failure_reason: str | None
    duration_ms: int
    metadata: dict[str, Any]
    retention_until: str
    is_sensitive: bool


class AccessLogPage(msgspec.Struct, frozen=True):
    entries: list[AccessLogEntryDTO]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


class KycCounts(msgspec.Struct, frozen=True):
    pending: int
    verified: int
    rejected: int


class RoleCounts(msgspec.Struct, frozen=True):
    user: int
    admin: int


class Stats(msgspec.Struct, frozen=True):
    total_users: int
    deleted_users: int
    active_sessions: int
    users_by_kyc_status: KycCounts
    users_by_role: RoleCounts


class Erased(msgspec.Struct, frozen=True):
    message: str
    user_id: str

"""Domain events: immutable msgspec structs with explicit, stable topics.

Every event names the subject user (`user_id`), so personal fields can be encrypted with that user's data
key (crypto-shredding). `PERSONAL` lists the payload fields that are personal; the metadata keys in
`PERSONAL_METADATA` are personal on every event. A stored event class is never renamed or removed: a breaking
change adds `class_version` and an `upcast_vN_vN+1` static method.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar
from uuid import UUID

import msgspec

ERASED = "[erased]"
PERSONAL_METADATA: tuple[str, ...] = ("ip_address", "user_agent")


class DomainEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Base of all stored events. Field names match the eventsourcing library's protocol."""

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    user_id: UUID
    metadata: dict[str, str] = {}

    TOPIC: ClassVar[str] = ""
    EVENT_TYPE: ClassVar[str | None] = None  # the published type; None for internal events
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    class_version: ClassVar[int] = 1


BASE_FIELDS = frozenset(DomainEvent.__struct_fields__)


def payload_fields(cls: type[DomainEvent]) -> tuple[str, ...]:
    """The event-specific fields of an event class, in declaration order."""
    return tuple(f for f in cls.__struct_fields__ if f not in BASE_FIELDS)


# --- user aggregate -------------------------------------------------------------------------------------


class UserRegistered(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.registered"
    EVENT_TYPE = "user.registered"
    PERSONAL = ("email", "first_name", "last_name")
    email: str
    first_name: str
    last_name: str
    role: str
    kyc_status: str


class UserEmailVerified(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.email_verified"
    EVENT_TYPE = "user.email.verified"
    PERSONAL = ("email",)
    email: str
    verified_at: datetime
    method: str


class UserProfileUpdated(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.profile_updated"
    EVENT_TYPE = "user.profile.updated"
    PERSONAL = ("email", "first_name", "last_name")
    email: str
    first_name: str
    last_name: str
    changed_fields: list[str]


class UserPasswordChanged(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.password_changed"
    EVENT_TYPE = "user.password.changed"
    PERSONAL = ("email",)
    email: str
    method: str


class UserKycUpdated(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.kyc_updated"
    EVENT_TYPE = "user.kyc.updated"
    PERSONAL = ("email",)
    email: str
    kyc_status: str
    old_status: str


class UserRoleChanged(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.role_changed"
    EVENT_TYPE = "user.role.changed"
    PERSONAL = ("email",)
    email: str
    role: str
    old_role: str


class UserLocked(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.locked"
    EVENT_TYPE = "user.locked"
    PERSONAL = ("email",)
    email: str
    locked_until: datetime
    failed_attempts: int


class UserUnlocked(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.unlocked"
    EVENT_TYPE = "user.unlocked"
    PERSONAL = ("email",)
    email: str
    method: str


class UserLoggedOutAll(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.logged_out_all"
    EVENT_TYPE = "user.logged_out_all"
    session_ids: list[str]
    session_count: int


class UserDeleted(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.deleted"
    EVENT_TYPE = "user.deleted"
    PERSONAL = ("email",)
    email: str
    deleted_at: datetime


class UserRestored(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.restored"
    EVENT_TYPE = "user.restored"
    PERSONAL = ("email",)
    email: str
    restored_at: datetime


class UserErased(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.user.erased"
    EVENT_TYPE = "user.erased"
    erased_at: datetime


# --- session aggregate ----------------------------------------------------------------------------------


class SessionLoggedIn(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.session.logged_in"
    EVENT_TYPE = "user.logged_in"
    PERSONAL = ("email", "ip_address", "user_agent")
    session_id: str
    email: str
    ip_address: str | None
    user_agent: str | None
    audience: str
    expires_at: datetime


class SessionLoggedOut(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.session.logged_out"
    EVENT_TYPE = "user.logged_out"
    session_id: str
    audience: str


class SessionRevoked(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.session.revoked"
    EVENT_TYPE = "user.session.revoked"
    session_id: str
    audience: str
    reason: str


class SessionTokenReuseDetected(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.session.token_reuse_detected"
    EVENT_TYPE = "user.token_reuse_detected"
    PERSONAL = ("ip_address", "user_agent")
    session_id: str
    audience: str
    ip_address: str | None
    user_agent: str | None


# --- link aggregate -------------------------------------------------------------------------------------


class LinkEmailVerificationRequested(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.link.email_verification_requested"
    EVENT_TYPE = "user.email_verification.requested"
    PERSONAL = ("email", "first_name", "token", "link")
    email: str
    first_name: str
    token: str
    link: str
    expires_at: datetime


class LinkPasswordResetRequested(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.link.password_reset_requested"
    EVENT_TYPE = "user.password_reset.requested"
    PERSONAL = ("email", "first_name", "token", "link")
    email: str
    first_name: str
    token: str
    link: str
    expires_at: datetime


# --- email index aggregate (internal, never published) ---------------------------------------------------


class EmailIndexClaimed(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.email_index.claimed"


class EmailIndexReleased(DomainEvent, frozen=True, kw_only=True):
    TOPIC = "pandora.email_index.released"


ALL_EVENTS: tuple[type[DomainEvent], ...] = (
    UserRegistered,
    UserEmailVerified,
    UserProfileUpdated,
    UserPasswordChanged,
    UserKycUpdated,
    UserRoleChanged,
    UserLocked,
    UserUnlocked,
    UserLoggedOutAll,
    UserDeleted,
    UserRestored,
    UserErased,
    SessionLoggedIn,
    SessionLoggedOut,
    SessionRevoked,
    SessionTokenReuseDetected,
    LinkEmailVerificationRequested,
    LinkPasswordResetRequested,
    EmailIndexClaimed,
    EmailIndexReleased,
)
BY_TOPIC: dict[str, type[DomainEvent]] = {cls.TOPIC: cls for cls in ALL_EVENTS}
BY_EVENT_TYPE: dict[str, type[DomainEvent]] = {cls.EVENT_TYPE: cls for cls in ALL_EVENTS if cls.EVENT_TYPE}
PUBLISHED_TOPICS: tuple[str, ...] = tuple(cls.TOPIC for cls in ALL_EVENTS if cls.EVENT_TYPE)

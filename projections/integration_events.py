"""Integration events: the public stream contract of SPEC §8.2/§8.3, mapped explicitly from domain events.

The table `CONTRACTS` is the contract. It names each public event type and its payload fields itself, so
renaming a domain class or attribute never changes what consumers see (a unit test fails instead). The
forwarder and gRPC `StreamEvents` both use `to_entry`, a pure function of (position, event, now).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec

from pandora_users.domain import events as ev
from pandora_users.domain import session as session_agg
from pandora_users.domain import user as user_agg
from pandora_users.timestamps import rfc3339

EVENT_ID_NAMESPACE = UUID("9f1c2d3e-5a6b-4c7d-8e9f-a0b1c2d3e4f5")
_NAMESPACE_SHA1 = hashlib.sha1(EVENT_ID_NAMESPACE.bytes, usedforsecurity=False)
SCHEMA_VERSION = "1"
ENTRY_FIELDS = (
    "event_id",
    "event_type",
    "user_id",
    "aggregate_id",
    "aggregate_version",
    "position",
    "timestamp",
    "schema_version",
    "payload",
    "metadata",
)
METADATA_KEYS = (  # SPEC §9.2, in the order they are written
    "actor_id",
    "actor_role",
    "ip_address",
    "user_agent",
    "request_id",
    "trace_id",
    "traceparent",
    "reason",
    "on_behalf_of",
    "service",
)
PERSONAL_METADATA_KEYS = ("ip_address", "user_agent")

Kind = Literal["text", "uuid", "timestamp", "count", "uuid_list", "text_list"]
Aggregate = Literal["user", "session", "link"]


@dataclass(frozen=True)
class Field:
    """One payload field: its public name, JSON kind, and what the schema says about it."""

    name: str
    kind: Kind = "text"
    personal: bool = False  # † in SPEC §8.3: "[erased]" after erasure
    nullable: bool = False
    enum: tuple[str, ...] = ()
    link_secret: bool = False  # token and link: only while unexpired, never after erasure


@dataclass(frozen=True)
class Contract:
    """A published event type: where it comes from and its payload, in order."""

    event_type: str
    aggregate: Aggregate
    domain: type[ev.DomainEvent]
    payload: tuple[Field, ...]
    description: str


ROLES = ("user", "admin")
KYC = user_agg.KYC_STATUSES
AUDIENCES = session_agg.AUDIENCES
REVOKE_REASONS = tuple(sorted(session_agg.REVOKE_REASONS))
EMAIL = Field("email", personal=True)
FIRST = Field("first_name", personal=True)
LAST = Field("last_name", personal=True)
SESSION = Field("session_id", "uuid")
AUDIENCE = Field("audience", enum=AUDIENCES)
IP = Field("ip_address", personal=True, nullable=True)
AGENT = Field("user_agent", personal=True, nullable=True)
LINK_FIELDS = (
    EMAIL,
    FIRST,
    Field("token", link_secret=True),
    Field("link", link_secret=True),
    Field("expires_at", "timestamp"),
)

CONTRACTS: tuple[Contract, ...] = (
    Contract(
        "user.registered",
        "user",
        ev.UserRegistered,
        (EMAIL, FIRST, LAST, Field("role", enum=ROLES), Field("kyc_status", enum=KYC)),
        "A user registered (self-service or create-admin).",
    ),
    Contract(
        "user.email_verification.requested",
        "link",
        ev.LinkEmailVerificationRequested,
        LINK_FIELDS,
        "An email-verification link was issued; token and link are present only while unexpired.",
    ),
    Contract(
        "user.email.verified",
        "user",
        ev.UserEmailVerified,
        (EMAIL, Field("verified_at", "timestamp"), Field("method", enum=("link", "password_reset", "admin_cli"))),
        "The user's email address was verified.",
    ),
    Contract(
        "user.logged_in",
        "session",
        ev.SessionLoggedIn,
        (SESSION, EMAIL, IP, AGENT, AUDIENCE, Field("expires_at", "timestamp")),
        "A session started (register, login or admin login).",
    ),
    Contract("user.logged_out", "session", ev.SessionLoggedOut, (SESSION, AUDIENCE), "A session was logged out."),
    Contract(
        "user.session.revoked",
        "session",
        ev.SessionRevoked,
        (SESSION, AUDIENCE, Field("reason", enum=REVOKE_REASONS)),
        "A session was ended for a reason other than logout.",
    ),
    Contract(
        "user.logged_out_all",
        "user",
        ev.UserLoggedOutAll,
        (Field("session_ids", "uuid_list"), Field("session_count", "count")),
        "The user logged out of every session.",
    ),
    Contract(
        "user.token_reuse_detected",
        "session",
        ev.SessionTokenReuseDetected,
        (SESSION, AUDIENCE, IP, AGENT),
        "A rotated refresh token was presented; the session is revoked next.",
    ),
    Contract(
        "user.profile.updated",
        "user",
        ev.UserProfileUpdated,
        (EMAIL, FIRST, LAST, Field("changed_fields", "text_list", enum=("first_name", "last_name"))),
        "The user's names changed (new values).",
    ),
    Contract(
        "user.password.changed",
        "user",
        ev.UserPasswordChanged,
        (EMAIL, Field("method", enum=("change", "reset"))),
        "The password was changed or reset.",
    ),
    Contract(
        "user.password_reset.requested",
        "link",
        ev.LinkPasswordResetRequested,
        LINK_FIELDS,
        "A password-reset link was issued; token and link are present only while unexpired.",
    ),
    Contract(
        "user.kyc.updated",
        "user",
        ev.UserKycUpdated,
        (EMAIL, Field("kyc_status", enum=KYC), Field("old_status", enum=KYC)),
        "The KYC status changed.",
    ),
    Contract(
        "user.role.changed",
        "user",
        ev.UserRoleChanged,
        (EMAIL, Field("role", enum=ROLES), Field("old_role", enum=ROLES)),
        "The role changed.",
    ),
    Contract(
        "user.locked",
        "user",
        ev.UserLocked,
        (EMAIL, Field("locked_until", "timestamp"), Field("failed_attempts", "count")),
        "The account was locked after repeated login failures.",
    ),
    Contract(
        "user.unlocked",
        "user",
        ev.UserUnlocked,
        (EMAIL, Field("method", enum=("admin", "password_reset"))),
        "The account was unlocked.",
    ),
    Contract("user.deleted", "user", ev.UserDeleted, (EMAIL, Field("deleted_at", "timestamp")), "Soft-deleted."),
    Contract("user.restored", "user", ev.UserRestored, (EMAIL, Field("restored_at", "timestamp")), "Restored."),
    Contract(
        "user.erased",
        "user",
        ev.UserErased,
        (Field("erased_at", "timestamp"),),
        "The user's personal data was erased (crypto-shredding); delete what you keep about this user_id.",
    ),
)
BY_DOMAIN: dict[type[ev.DomainEvent], Contract] = {c.domain: c for c in CONTRACTS}
BY_TYPE: dict[str, Contract] = {c.event_type: c for c in CONTRACTS}
ERASED_TYPE = "user.erased"


class UnmappedEvent(Exception):
    """A domain event declares a published type but has no contract: a bug, never silently skipped."""


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One stream entry (SPEC §8.2); every field is a string."""

    event_id: str
    event_type: str
    user_id: str
    aggregate_id: str
    aggregate_version: str
    position: str
    timestamp: str
    schema_version: str
    payload: str
    metadata: str

    def fields(self) -> dict[str, str]:
        """The entry as XADD field/value pairs, in contract order."""
        return {name: getattr(self, name) for name in ENTRY_FIELDS}


def event_id(aggregate_id: UUID | str, version: int) -> str:
    """The deterministic UUID v5 of SPEC §2.3: `uuid5(EVENT_ID_NAMESPACE, "<aggregate id>:<version>")`, with
    the namespace's SHA-1 state computed once (uuid5 and UUID objects were a tenth of the forwarder's time)."""
    digest = _NAMESPACE_SHA1.copy()
    digest.update(f"{aggregate_id}:{version}".encode())
    raw = bytearray(digest.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def to_entry(position: int, event: ev.DomainEvent, now: datetime) -> Entry | None:
    """The public entry of a domain event at `position`, or None for internal events. Pure, no I/O."""
    contract = BY_DOMAIN.get(type(event))
    if contract is None:
        if type(event).EVENT_TYPE is None:
            return None
        raise UnmappedEvent(f"no integration contract for {type(event).__name__}")
    aggregate_id = str(event.originator_id)
    return Entry(
        event_id=event_id(aggregate_id, event.originator_version),
        event_type=contract.event_type,
        user_id=aggregate_id if event.user_id == event.originator_id else str(event.user_id),
        aggregate_id=aggregate_id,
        aggregate_version=str(event.originator_version),
        position=str(position),
        timestamp=rfc3339(event.timestamp),
        schema_version=SCHEMA_VERSION,
        payload=_json(payload_of(contract, event, now)),
        metadata=_json(metadata_of(event)),
    )


def audit_payload(event: ev.DomainEvent) -> dict[str, Any]:
    """The payload auditors see (admin history, global log, gRPC history): the contract's fields, never link
    secrets (SPEC §8.3: a link token is never shown by the admin API, the CLI or GetUserHistory)."""
    contract = BY_DOMAIN[type(event)]
    return payload_of(contract, event, now=None)


def payload_of(contract: Contract, event: ev.DomainEvent, now: datetime | None) -> dict[str, Any]:
    """Exactly the contract's payload fields; link secrets only while live and never after erasure."""
    show_secrets = now is not None and _link_is_live(event, now)
    payload: dict[str, Any] = {}
    for field in contract.payload:
        if field.link_secret and not show_secrets:
            continue
        value = getattr(event, field.name)
        payload[field.name] = rfc3339(value) if field.kind == "timestamp" else value
    return payload


def metadata_of(event: ev.DomainEvent) -> dict[str, str]:
    """The §9.2 keys that have a value, as they are (trace context included)."""
    return {key: value for key in METADATA_KEYS if (value := event.metadata.get(key))}


def _link_is_live(event: ev.DomainEvent, now: datetime) -> bool:
    expires_at = getattr(event, "expires_at", None)
    if not isinstance(expires_at, datetime) or expires_at <= now:
        return False
    return ev.ERASED not in (getattr(event, "token", None), getattr(event, "link", None))


_encoder = msgspec.json.Encoder()


def _json(value: dict[str, Any]) -> str:
    return _encoder.encode(value).decode()

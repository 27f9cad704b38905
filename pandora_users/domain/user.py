"""The user aggregate: profile, KYC, role and lifecycle. Its version is the user's ETag."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import msgspec

from pandora_users.domain import events as ev
from pandora_users.domain.context import AggregateState, Context, E, new_event
from pandora_users.domain.errors import (
    InvalidKycStatus,
    InvalidKycTransition,
    InvalidRole,
    UserErased,
    UserNotFound,
    VersionConflict,
)

KYC_STATUSES = ("pending", "verified", "rejected")
ROLES = ("user", "admin")


class User(AggregateState, frozen=True, kw_only=True):
    email: str
    first_name: str
    last_name: str
    role: str
    kyc_status: str
    created_at: datetime
    updated_at: datetime
    email_verified_at: datetime | None = None
    locked_until: datetime | None = None
    deleted_at: datetime | None = None
    erased_at: datetime | None = None

    @property
    def is_active(self) -> bool:
        return self.deleted_at is None and self.erased_at is None

    def is_locked(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now

    def _next(self, cls: type[E], ctx: Context, **payload: object) -> E:
        return new_event(cls, self.id, self.version + 1, self.id, ctx, **payload)


def check_version(user: User, expected: int | None) -> None:
    """The If-Match precondition: 412 with the current version when it differs (None = no precondition)."""
    if expected is not None and expected != user.version:
        raise VersionConflict(extra={"current_version": user.version})


def require_live(user: User | None) -> User:
    """The user, when it exists and is neither soft-deleted nor erased."""
    if user is None or not user.is_active:
        raise UserNotFound()
    return user


def register(
    user_id: UUID, *, email: str, first_name: str, last_name: str, role: str, ctx: Context
) -> ev.UserRegistered:
    if role not in ROLES:
        raise InvalidRole()
    return new_event(
        ev.UserRegistered,
        user_id,
        1,
        user_id,
        ctx,
        email=email,
        first_name=first_name,
        last_name=last_name,
        role=role,
        kyc_status="pending",
    )


def verify_email(user: User, *, method: str, ctx: Context) -> list[ev.DomainEvent]:
    if user.email_verified_at is not None:
        return []
    return [user._next(ev.UserEmailVerified, ctx, email=user.email, verified_at=ctx.now, method=method)]


def update_profile(user: User, *, first_name: str | None, last_name: str | None, ctx: Context) -> list[ev.DomainEvent]:
    first = user.first_name if first_name is None else first_name
    last = user.last_name if last_name is None else last_name
    changed = [
        name
        for name, old, new in (("first_name", user.first_name, first), ("last_name", user.last_name, last))
        if old != new
    ]
    if not changed:
        return []
    return [
        user._next(
            ev.UserProfileUpdated,
            ctx,
            email=user.email,
            first_name=first,
            last_name=last,
            changed_fields=changed,
        )
    ]


def change_password(user: User, *, method: str, ctx: Context) -> ev.UserPasswordChanged:
    return user._next(ev.UserPasswordChanged, ctx, email=user.email, method=method)


def change_kyc(user: User, status: str, *, self_service: bool, ctx: Context) -> list[ev.DomainEvent]:
    """Admins and services may set any status; a user may only resubmit (rejected -> pending)."""
    if status not in KYC_STATUSES:
        raise InvalidKycStatus()
    if self_service:
        if status != "pending":
            raise InvalidKycStatus()
        if user.kyc_status != "rejected":
            raise InvalidKycTransition()
    if status == user.kyc_status:
        return []
    return [user._next(ev.UserKycUpdated, ctx, email=user.email, kyc_status=status, old_status=user.kyc_status)]


def change_role(user: User, role: str, *, ctx: Context) -> list[ev.DomainEvent]:
    if role not in ROLES:
        raise InvalidRole()
    if role == user.role:
        return []
    return [user._next(ev.UserRoleChanged, ctx, email=user.email, role=role, old_role=user.role)]


def lock(user: User, *, until: datetime, failed_attempts: int, ctx: Context) -> list[ev.DomainEvent]:
    if user.locked_until is not None and user.locked_until >= until:
        return []
    return [user._next(ev.UserLocked, ctx, email=user.email, locked_until=until, failed_attempts=failed_attempts)]


def unlock(user: User, *, method: str, ctx: Context) -> list[ev.DomainEvent]:
    if not user.is_locked(ctx.now):
        return []
    return [user._next(ev.UserUnlocked, ctx, email=user.email, method=method)]


def log_out_all(user: User, session_ids: list[str], *, ctx: Context) -> list[ev.DomainEvent]:
    if not session_ids:
        return []
    return [user._next(ev.UserLoggedOutAll, ctx, session_ids=session_ids, session_count=len(session_ids))]


def delete(user: User, *, ctx: Context) -> list[ev.DomainEvent]:
    if not user.is_active:
        return []
    return [user._next(ev.UserDeleted, ctx, email=user.email, deleted_at=ctx.now)]


def restore(user: User, *, ctx: Context) -> list[ev.DomainEvent]:
    if user.erased_at is not None:
        raise UserErased()
    if user.deleted_at is None:
        return []
    return [user._next(ev.UserRestored, ctx, email=user.email, restored_at=ctx.now)]


def erase(user: User, *, ctx: Context) -> list[ev.DomainEvent]:
    if user.erased_at is not None:
        return []
    return [user._next(ev.UserErased, ctx, erased_at=ctx.now)]


def apply(user: User | None, event: ev.DomainEvent) -> User:
    """Evolve the state by one event. Tolerates `[erased]` personal fields."""
    if isinstance(event, ev.UserRegistered):
        return User(
            id=event.originator_id,
            version=event.originator_version,
            email=event.email,
            first_name=event.first_name,
            last_name=event.last_name,
            role=event.role,
            kyc_status=event.kyc_status,
            created_at=event.timestamp,
            updated_at=event.timestamp,
        )
    if user is None:
        raise ValueError(f"{type(event).__name__} before user.registered")
    changes: dict[str, object] = {"version": event.originator_version, "updated_at": event.timestamp}
    match event:
        case ev.UserEmailVerified():
            changes["email_verified_at"] = event.verified_at
        case ev.UserProfileUpdated():
            changes.update(first_name=event.first_name, last_name=event.last_name)
        case ev.UserKycUpdated():
            changes["kyc_status"] = event.kyc_status
        case ev.UserRoleChanged():
            changes["role"] = event.role
        case ev.UserLocked():
            changes["locked_until"] = event.locked_until
        case ev.UserUnlocked():
            changes["locked_until"] = None
        case ev.UserDeleted():
            changes["deleted_at"] = event.deleted_at
        case ev.UserRestored():
            changes["deleted_at"] = None
        case ev.UserErased():
            changes.update(erased_at=event.erased_at, email=ev.ERASED, first_name=ev.ERASED, last_name=ev.ERASED)
    return msgspec.structs.replace(user, **changes)


def project(user: User | None, events: Iterable[ev.DomainEvent]) -> User | None:
    """The repository's projector: fold the stored events of one user (None when the id is not a user's)."""
    for event in events:
        if user is None and not isinstance(event, ev.UserRegistered):
            return None
        user = apply(user, event)
    return user

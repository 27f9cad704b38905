"""The link aggregate: email-verification and password-reset tokens sent through the notification service.

One aggregate per (user, purpose); each request appends an event. The token itself travels encrypted in the
event (for the forwarder) and as a SHA-256 in the credential store (for redemption).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import msgspec

from pandora_users.domain import events as ev
from pandora_users.domain.context import AggregateState, Context, fold, new_event

LINK_NAMESPACE = UUID("5d1b8a3e-2c4f-4e6a-9b7d-1f0e3c2a4b6d")
PURPOSES: dict[str, type[ev.LinkEmailVerificationRequested] | type[ev.LinkPasswordResetRequested]] = {
    "email_verification": ev.LinkEmailVerificationRequested,
    "password_reset": ev.LinkPasswordResetRequested,
}


class Link(AggregateState, frozen=True, kw_only=True):
    user_id: UUID
    purpose: str
    last_requested_at: datetime


def link_id(user_id: UUID, purpose: str) -> UUID:
    """The link aggregate id, derived from (user id, purpose)."""
    return uuid.uuid5(LINK_NAMESPACE, f"{user_id}:{purpose}")


def request(
    link: Link | None,
    *,
    user_id: UUID,
    purpose: str,
    email: str,
    first_name: str,
    token: str,
    url_template: str,
    expires_at: datetime,
    ctx: Context,
) -> ev.DomainEvent:
    """Issue a new link token; it supersedes earlier ones of the same purpose (credential store)."""
    cls = PURPOSES[purpose]
    return new_event(
        cls,
        link_id(user_id, purpose),
        1 if link is None else link.version + 1,
        user_id,
        ctx,
        email=email,
        first_name=first_name,
        token=token,
        link=url_template.replace("{token}", token),
        expires_at=expires_at,
    )


def apply(link: Link | None, event: ev.DomainEvent) -> Link:
    purpose = next(p for p, cls in PURPOSES.items() if isinstance(event, cls))
    if link is None:
        return Link(
            id=event.originator_id,
            version=event.originator_version,
            user_id=event.user_id,
            purpose=purpose,
            last_requested_at=event.timestamp,
        )
    return msgspec.structs.replace(link, version=event.originator_version, last_requested_at=event.timestamp)


def project(link: Link | None, events: Iterable[ev.DomainEvent]) -> Link | None:
    return fold(link, events, apply)

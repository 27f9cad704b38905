"""The email index aggregate: makes email uniqueness a write-transaction decision.

Its id is derived from an HMAC of the canonical email keyed by a secret pepper, so the id neither reveals
nor confirms an email. Two concurrent claims append the same version: exactly one commits.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterable
from uuid import UUID

import msgspec

from pandora_users.domain import events as ev
from pandora_users.domain.context import AggregateState, Context, fold, new_event
from pandora_users.domain.errors import UserAlreadyExists


class EmailIndex(AggregateState, frozen=True, kw_only=True):
    owner: UUID | None  # the user holding the email, None once released


def index_id(pepper: bytes, canonical_email: str) -> UUID:
    """UUID (version 8, RFC 9562 custom) from HMAC-SHA256(pepper, canonical email)."""
    digest = bytearray(hmac.new(pepper, canonical_email.encode(), hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(digest))


def claim(index: EmailIndex | None, *, index_uuid: UUID, user_id: UUID, ctx: Context) -> ev.DomainEvent:
    if index is not None and index.owner is not None:
        raise UserAlreadyExists()
    version = 1 if index is None else index.version + 1
    return new_event(ev.EmailIndexClaimed, index_uuid, version, user_id, ctx)


def release(index: EmailIndex | None, *, user_id: UUID, ctx: Context) -> list[ev.DomainEvent]:
    if index is None or index.owner != user_id:
        return []
    return [new_event(ev.EmailIndexReleased, index.id, index.version + 1, user_id, ctx)]


def apply(index: EmailIndex | None, event: ev.DomainEvent) -> EmailIndex:
    owner = event.user_id if isinstance(event, ev.EmailIndexClaimed) else None
    if index is None:
        return EmailIndex(id=event.originator_id, version=event.originator_version, owner=owner)
    return msgspec.structs.replace(index, version=event.originator_version, owner=owner)


def project(index: EmailIndex | None, events: Iterable[ev.DomainEvent]) -> EmailIndex | None:
    return fold(index, events, apply)

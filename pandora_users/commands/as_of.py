"""The state of a user at an instant (SPEC §4.2 `?as_of=`), rebuilt from the event store, never a read model.

Only the user aggregate's events with `timestamp ≤ as_of` are folded. The fold stops at the first later event,
so the result is always a state the aggregate really had (a prefix of its history), even in the rare case of a
retried command whose decision time is older than the event committed before it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import cast
from uuid import UUID

from pandora_users.commands.base import WriteSide
from pandora_users.domain import user as user_agg
from pandora_users.domain.errors import FieldError, InvalidRequest, UserNotFound
from pandora_users.domain.events import DomainEvent, UserRegistered
from pandora_users.domain.user import User
from pandora_users.store.app import EventStore


def until(events: Iterable[DomainEvent], as_of: datetime) -> Iterator[DomainEvent]:
    """The events up to the first one decided after `as_of`."""
    for event in events:
        if event.timestamp > as_of:
            return
        yield event


def state_at(store: EventStore, user_id: UUID, as_of: datetime) -> User | None:
    """The user as it was at `as_of` (None when it did not exist yet). Personal data is `[erased]` once the
    user's key is destroyed, as everywhere the events are decoded."""
    events = iter(cast(Iterable[DomainEvent], store.events.get(user_id)))
    first = next(events, None)
    if not isinstance(first, UserRegistered):  # unknown, or the id of another aggregate (a session, a link)
        return None
    return user_agg.project(None, until(itertools.chain([first], events), as_of))


async def user_as_of(w: WriteSide, user_id: UUID, as_of: datetime) -> User:
    """`GET /admin/users/{id}?as_of=`: 400 for a naive or future instant, 404 before the user existed."""
    if as_of.tzinfo is None:
        raise InvalidRequest(details=[FieldError("as_of", "must be an RFC 3339 timestamp with an offset")])
    if as_of > w.clock():
        raise InvalidRequest(details=[FieldError("as_of", "must not be in the future")])
    user = await w.run(state_at, w.store, user_id, as_of)
    if user is None:
        raise UserNotFound()
    return user

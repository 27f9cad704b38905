"""What every decision needs besides state: the time it is made and the metadata its events carry."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Generic, TypeVar
from uuid import UUID

import msgspec

from pandora_users.domain.events import DomainEvent

E = TypeVar("E", bound=DomainEvent)
A = TypeVar("A", bound="AggregateState")


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """The instant of a decision and the audit metadata of SPEC §9.2 (actor, request, trace, reason...)."""

    now: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))
    metadata: dict[str, str] = {}

    def with_reason(self, reason: str | None) -> Context:
        if not reason:
            return self
        return msgspec.structs.replace(self, metadata={**self.metadata, "reason": reason})


class AggregateState(msgspec.Struct, frozen=True, kw_only=True):
    """Common part of every immutable aggregate: its id and version (number of events applied)."""

    id: UUID
    version: int


def new_event(cls: type[E], aggregate_id: UUID, version: int, user_id: UUID, ctx: Context, **payload: object) -> E:
    """Build event number `version` of an aggregate, stamped with the context's time and metadata."""
    return cls(
        originator_id=aggregate_id,
        originator_version=version,
        timestamp=ctx.now,
        user_id=user_id,
        metadata=dict(ctx.metadata),
        **payload,
    )


def fold(state: A | None, events: Iterable[DomainEvent], apply: Callable[[A | None, DomainEvent], A]) -> A | None:
    """Apply events in order to a state (None = not yet created)."""
    for event in events:
        state = apply(state, event)
    return state


class Pending(Generic[A]):
    """Events decided so far on one aggregate, and the state they lead to (for multi-step decisions)."""

    def __init__(self, state: A, apply: Callable[[A | None, DomainEvent], A]) -> None:
        self.state = state
        self.events: list[DomainEvent] = []
        self._apply = apply

    def add(self, events: Iterable[DomainEvent]) -> A:
        for event in events:
            self.state = self._apply(self.state, event)
            self.events.append(event)
        return self.state

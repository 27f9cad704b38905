"""Given/when/then helpers for aggregate tests on pure decide/apply functions."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.domain.events import DomainEvent

S = TypeVar("S")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ctx(minutes: float = 0, **metadata: str) -> Context:
    return Context(now=T0 + timedelta(minutes=minutes), metadata=dict(metadata))


def given(project: Callable[[S | None, Iterable[DomainEvent]], S | None], *events: DomainEvent) -> S:
    state = project(None, events)
    assert state is not None
    return state


def then(events: list[DomainEvent], *expected: tuple[type[DomainEvent], dict[str, Any]]) -> None:
    """The decided events are exactly these types, each with (at least) these field values."""
    assert [type(e) for e in events] == [cls for cls, _ in expected]
    for event, (_, fields) in zip(events, expected, strict=True):
        for name, value in fields.items():
            assert getattr(event, name) == value, (name, getattr(event, name), value)


def registered(user_id: uuid.UUID | None = None, role: str = "user") -> DomainEvent:
    uid = user_id or uuid.uuid4()
    return user_agg.register(uid, email="ann@example.com", first_name="Ann", last_name="Lee", role=role, ctx=ctx())

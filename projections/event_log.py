"""The `event_log` read model: an index of every published event (SPEC §4.4 events, §4.2 history).

One row per event whose class has an `EVENT_TYPE`; internal `email_index.*` events are not indexed. No
payload and no personal data is copied: the event store is the only place personal data exists (encrypted),
and queries decode payloads from it by position, which yields `[erased]` after erasure.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from pandora_users.domain import events as ev
from projections import integration_events
from projections.runner import Envelope

VIEW = "event_log"
SCHEMA_VERSION = 1
TOPICS: tuple[str, ...] = ev.PUBLISHED_TOPICS

COLUMNS = (
    "position",
    "event_id",
    "event_type",
    "user_id",
    "aggregate_id",
    "aggregate_version",
    "timestamp",
    "schema_version",
    "actor_id",
)
TYPES = ("bigint", "uuid", "text", "uuid", "uuid", "bigint", "timestamptz", "integer", "text")


def event_id(aggregate_id: uuid.UUID, aggregate_version: int) -> uuid.UUID:
    """The deterministic event id of SPEC §2.3, as the stream carries it."""
    return uuid.UUID(integration_events.event_id(aggregate_id, aggregate_version))


@dataclass(frozen=True)
class Row:
    position: int
    event_id: uuid.UUID
    event_type: str
    user_id: uuid.UUID
    aggregate_id: uuid.UUID
    aggregate_version: int
    timestamp: datetime
    schema_version: int
    actor_id: str | None


def reduce(event: ev.DomainEvent, position: int) -> Row | None:
    """The index row of one event at `position`, or None for an internal event."""
    event_type = type(event).EVENT_TYPE
    if event_type is None:
        return None
    return Row(
        position=position,
        event_id=event_id(event.originator_id, event.originator_version),
        event_type=event_type,
        user_id=event.user_id,
        aggregate_id=event.originator_id,
        aggregate_version=event.originator_version,
        timestamp=event.timestamp,
        schema_version=SCHEMA_VERSION,
        actor_id=event.metadata.get("actor_id"),
    )


def insert(conn: psycopg.Connection[Any], table: str, rows: Sequence[Row]) -> None:
    """All rows in one statement (arrays unnested server-side); works on the view and on a table."""
    if not rows:
        return
    arrays = [[getattr(row, column) for row in rows] for column in COLUMNS]
    unnest = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in TYPES)
    statement = sql.SQL("INSERT INTO {table} ({columns}) SELECT * FROM unnest({unnest})").format(
        table=sql.Identifier(table),
        columns=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
        unnest=unnest,
    )
    conn.execute(statement, arrays, prepare=True)


class EventLogProjection:
    """Keeps the event index behind `table` (the view by default; a new version during a rebuild)."""

    topics = TOPICS

    def __init__(self, table: str = VIEW, name: str = "event_log") -> None:
        self.table = table
        self.name = name

    def apply(self, conn: psycopg.Connection[Any], batch: Sequence[Envelope]) -> None:
        insert(conn, self.table, [row for env in batch if (row := reduce(env.event, env.position)) is not None])

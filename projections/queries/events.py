"""Queries on the `event_log` read model: a user's history (SPEC §4.2) and the global log (§4.4).

The index holds no payloads. Each page's payloads and metadata are decoded from the event store by position
with the store's mapper (in a worker thread), so personal data is decrypted, or `[erased]` once the user's
key is destroyed. Link tokens (`token`, `link`) are never returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from eventsourcing.persistence import StoredEvent

from pandora_users.domain.errors import UserNotFound
from pandora_users.domain.events import BY_EVENT_TYPE, DomainEvent
from pandora_users.infra.read_pool import in_snapshot
from pandora_users.store.app import EVENTS_TABLE, EventStore
from pandora_users.timestamps import rfc3339
from projections.integration_events import audit_payload, metadata_of
from projections.queries.pagination import (
    MAX_LIMIT,
    PageRequest,
    Where,
    decode_cursor,
    encode_cursor,
    envelope,
    fingerprint,
    invalid,
    select,
)

COLUMNS = "position, event_id, event_type, user_id, aggregate_id, aggregate_version, timestamp, schema_version"
STORED = (
    f"SELECT notification_id, originator_id, originator_version, topic, state FROM {EVENTS_TABLE}"  # noqa: S608
    " WHERE notification_id = ANY($1::bigint[])"
)


def parse_types(types: str | Iterable[str] | None) -> list[str] | None:
    """Event types from `type=a,b` (or a list); 400 for a type that is not published."""
    if types is None:
        return None
    names = [t.strip() for t in (types.split(",") if isinstance(types, str) else types)]
    names = [t for t in names if t]
    unknown = [t for t in names if t not in BY_EVENT_TYPE]
    if unknown:
        raise invalid("type", f"unknown event type: {unknown[0][:100]}")
    return sorted(set(names)) or None


def to_dto(row: Any, event: DomainEvent) -> dict[str, Any]:
    """An EventDTO (SPEC §2.13) from an index row and its decoded event."""
    return {
        "position": row["position"],
        "event_id": str(row["event_id"]),
        "event_type": row["event_type"],
        "user_id": str(row["user_id"]),
        "aggregate_id": str(row["aggregate_id"]),
        "aggregate_version": row["aggregate_version"],
        "timestamp": rfc3339(row["timestamp"]),
        "schema_version": row["schema_version"],
        "payload": audit_payload(event),
        "metadata": metadata_of(event),
    }


def _decode_all(store: EventStore, stored: Sequence[Any]) -> dict[int, DomainEvent]:
    return {
        row["notification_id"]: store.decode(
            StoredEvent(
                originator_id=UUID(bytes=row["originator_id"].bytes),
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
        )
        for row in stored
    }


async def event_dtos(conn: asyncpg.Connection, store: EventStore, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """EventDTOs for index rows, payloads decoded from the event store by position (off the loop)."""
    if not rows:
        return []
    stored = await conn.fetch(STORED, [row["position"] for row in rows])
    events = await asyncio.to_thread(_decode_all, store, stored)
    return [to_dto(row, events[row["position"]]) for row in rows]


async def user_history(
    pool: asyncpg.Pool,
    store: EventStore,
    user_id: UUID,
    page: PageRequest,
    *,
    order: str = "desc",
    types: str | Iterable[str] | None = None,
) -> dict[str, Any]:
    """`GET /users/{id}/history`: `{"events": [EventDTO], "total", "limit", "offset", "next_cursor"}`."""
    if order not in ("asc", "desc"):
        raise invalid("order", "must be asc or desc")
    wanted = parse_types(types)
    print_ = fingerprint("history", {"user_id": str(user_id), "order": order, "types": wanted})
    key = decode_cursor(page, print_)
    where = Where()
    where.add("user_id = {}", user_id)
    if wanted:
        where.add("event_type = ANY({}::text[])", wanted)
    rows_where = where.copy()
    if key is not None:
        if len(key) != 1 or not isinstance(key[0], int):
            raise invalid("cursor", "invalid cursor")
        rows_where.add("position > {}" if order == "asc" else "position < {}", key[0])
    limit, offset = rows_where.arg(page.limit + 1), rows_where.arg(page.offset)
    text = select(COLUMNS, "event_log", rows_where, f" ORDER BY position {order} LIMIT {limit} OFFSET {offset}")

    async def read(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], int, list[dict[str, Any]]]:
        if await conn.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is None:
            raise UserNotFound()
        rows = await conn.fetch(text, *rows_where.args)
        total = await conn.fetchval(select("count(*)", "event_log", where), *where.args)
        return rows, total, await event_dtos(conn, store, rows[: page.limit])

    rows, total, items = await in_snapshot(pool, read)
    more, rows = len(rows) > page.limit, rows[: page.limit]
    next_cursor = encode_cursor([rows[-1]["position"]], print_) if more else None
    return envelope("events", items, int(total), page, next_cursor)


async def global_events(
    pool: asyncpg.Pool,
    store: EventStore,
    *,
    after_position: int = 0,
    limit: int = 20,
    types: str | Iterable[str] | None = None,
    user_id: UUID | None = None,
    actor_id: str | None = None,
    from_: datetime | None = None,
    to: datetime | None = None,
) -> dict[str, Any]:
    """`GET /events`: published events after a position, ascending; `next_after_position`, `head_position`."""
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid("limit", f"must be an integer between 1 and {MAX_LIMIT}")
    if after_position < 0:
        raise invalid("after_position", "must be a non-negative integer")
    for label, moment in (("from", from_), ("to", to)):
        if moment is not None and moment.tzinfo is None:
            raise invalid(label, "must be an RFC 3339 timestamp with an offset")
    where = Where()
    where.add("position > {}", after_position)
    wanted = parse_types(types)
    if wanted:
        where.add("event_type = ANY({}::text[])", wanted)
    if user_id is not None:
        where.add("user_id = {}", user_id)
    if actor_id is not None:
        where.add("actor_id = {}", actor_id)
    if from_ is not None:
        where.add("timestamp >= {}", from_)
    if to is not None:
        where.add("timestamp < {}", to)
    text = select(COLUMNS, "event_log", where, f" ORDER BY position LIMIT {where.arg(limit)}")

    async def read(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], int, list[dict[str, Any]]]:
        rows = await conn.fetch(text, *where.args)
        head = await conn.fetchval(f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}")  # noqa: S608
        return rows, head, await event_dtos(conn, store, rows)

    rows, head, items = await in_snapshot(pool, read)
    return {
        "events": items,
        "next_after_position": rows[-1]["position"] if rows else None,
        "head_position": int(head),
    }

"""GetUserHistory (SPEC §5.2): the user's published events as the admin history shows them, streamed.

The same read as `GET /api/v1/admin/users/{id}/history`: the `event_log` index for positions, payloads
decoded from the event store (personal data decrypted or `[erased]`, link tokens never shown). Pages are
keyed by position, so a long history streams in bounded batches.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any
from uuid import UUID

import asyncpg

from pandora_users.domain.errors import UserNotFound
from pandora_users.infra.read_pool import in_snapshot
from pandora_users.store.app import EventStore
from projections.queries.events import COLUMNS, event_dtos, parse_types
from projections.queries.pagination import Where, invalid, select
from rpc.gen import user_pb2 as pb

PAGE = 100


def _check(request: pb.GetUserHistoryRequest) -> list[str] | None:
    for name in ("after_position", "limit", "before_position"):
        if getattr(request, name) < 0:
            raise invalid(name, "must not be negative")
    return parse_types(list(request.event_types)) if request.event_types else None


async def history(
    pool: asyncpg.Pool, store: EventStore, user_id: UUID, request: pb.GetUserHistoryRequest
) -> AsyncGenerator[dict[str, Any], None]:
    """EventDTOs of the user, oldest first (or newest first), after/before the given positions."""
    types = _check(request)
    if await pool.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is None:
        raise UserNotFound()  # never existed (deleted and erased users have a history)
    order = "DESC" if request.newest_first else "ASC"
    after, before = request.after_position, request.before_position
    left = request.limit or None
    while left is None or left > 0:
        where = Where()
        where.add("user_id = {}", user_id)
        where.add("position > {}", after)
        if before:
            where.add("position < {}", before)
        if types:
            where.add("event_type = ANY({}::text[])", types)
        size = PAGE if left is None else min(PAGE, left)
        text = select(COLUMNS, "event_log", where, f" ORDER BY position {order} LIMIT {where.arg(size)}")

        async def read(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], list[dict[str, Any]]]:
            rows = await conn.fetch(text, *where.args)  # noqa: B023 - awaited within this iteration
            return rows, await event_dtos(conn, store, rows)

        rows, dtos = await in_snapshot(pool, read)
        for dto in dtos:
            yield dto
        if len(rows) < size:
            return
        if left is not None:
            left -= len(rows)
        if request.newest_first:
            before = rows[-1]["position"]
        else:
            after = rows[-1]["position"]

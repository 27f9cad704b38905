"""Admin session lists (SPEC §4.2 `GET /users/{id}/sessions`, §4.3 `GET /sessions`), with asyncpg.

Sessions live in the credential store (`sessions`), so these lists are always current and never wait for a
projection; the owner's email and names come from the `users` read model (null until it has the user).
`newest_first` is the keyset page shared by the lists ordered by `created_at` then `id`, descending.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from pandora_users.domain.errors import UserNotFound
from pandora_users.domain.events import ERASED, UserRegistered
from pandora_users.infra.read_pool import in_snapshot
from pandora_users.store.app import EVENTS_TABLE
from pandora_users.timestamps import rfc3339, rfc3339_or_none
from projections.queries.pagination import (
    PageRequest,
    Where,
    decode_cursor,
    encode_cursor,
    envelope,
    fingerprint,
    invalid,
    parse_ts,
    select,
)

COLUMNS = (
    "s.id, s.user_id, s.audience, s.ip_address, s.user_agent, s.created_at, s.last_used_at, s.expires_at,"
    " s.ended_at, s.end_reason, u.email, u.first_name, u.last_name"
)
SOURCE = "sessions s LEFT JOIN users u ON u.id = s.user_id"
USER_EXISTS = f"SELECT 1 FROM {EVENTS_TABLE} WHERE originator_id = $1 AND originator_version = 1 AND topic = $2"  # noqa: S608
STATUSES = ("active", "all")


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    total: int
    next_cursor: str | None


async def newest_first(
    pool: asyncpg.Pool, *, columns: str, source: str, where: Where, page: PageRequest, print_: str, alias: str = ""
) -> Page:
    """One page ordered by `(created_at, id)` descending, the real total, and the cursor of the next page."""
    key = decode_cursor(page, print_)
    rows_where = where.copy()
    if key is not None:
        if len(key) != 2 or not isinstance(key[1], str):
            raise invalid("cursor", "invalid cursor")
        try:
            last_id = UUID(key[1])
        except ValueError:
            raise invalid("cursor", "invalid cursor") from None
        rows_where.add(f"({alias}created_at, {alias}id) < ({{}}, {{}})", parse_ts(key[0], "cursor"), last_id)
    limit, offset = rows_where.arg(page.limit + 1), rows_where.arg(page.offset)
    order = f" ORDER BY {alias}created_at DESC, {alias}id DESC LIMIT {limit} OFFSET {offset}"

    async def read(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], int]:
        rows = await conn.fetch(select(columns, source, rows_where, order), *rows_where.args)
        return rows, await conn.fetchval(select("count(*)", source, where), *where.args)

    rows, total = await in_snapshot(pool, read)
    more, rows = len(rows) > page.limit, rows[: page.limit]
    next_cursor = None
    if more:
        next_cursor = encode_cursor([rfc3339(rows[-1]["created_at"]), str(rows[-1]["id"])], print_)
    return Page(list(rows), int(total), next_cursor)


def _live(where: Where, now: datetime, idle_timeout: float) -> None:
    where.add("s.ended_at IS NULL AND s.expires_at > {}", now)
    if idle_timeout > 0:
        where.add("s.last_used_at > {}", now - timedelta(seconds=idle_timeout))


def to_dto(row: Any, now: datetime, idle_timeout: float) -> dict[str, Any]:
    """An AdminSessionDTO (SPEC §2.13): `active`, `ended` (by an event) or `expired` (by time)."""
    idle = idle_timeout > 0 and row["last_used_at"] + timedelta(seconds=idle_timeout) <= now
    status = "ended" if row["ended_at"] is not None else "expired" if row["expires_at"] <= now or idle else "active"
    return {
        "id": str(row["id"]),
        "audience": row["audience"],
        "ip_address": row["ip_address"],
        "user_agent": row["user_agent"],
        "created_at": rfc3339(row["created_at"]),
        "last_used_at": rfc3339(row["last_used_at"]),
        "expires_at": rfc3339(row["expires_at"]),
        "user_id": str(row["user_id"]),
        "email": _email(row),
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "status": status,
        "ended_at": rfc3339_or_none(row["ended_at"]),
        "end_reason": row["end_reason"] if row["ended_at"] is not None else None,
    }


def _email(row: Any) -> str | None:
    """The owner's email; None until the read model has the user, `[erased]` after erasure (a NULL column)."""
    if row["email"] is None and row["first_name"] is not None:
        return ERASED
    return str(row["email"]) if row["email"] is not None else None


async def user_exists(pool: asyncpg.Pool, user_id: UUID) -> bool:
    """From the event store itself (not a read model), so a user registered a moment ago exists."""
    return await pool.fetchval(USER_EXISTS, user_id, UserRegistered.TOPIC) is not None


async def user_sessions(
    pool: asyncpg.Pool,
    user_id: UUID,
    page: PageRequest,
    *,
    status: str = "active",
    idle_timeout: float = 0.0,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`GET /users/{id}/sessions`: live sessions (`status=active`) or every recorded one (`all`)."""
    if status not in STATUSES:
        raise invalid("status", "must be active or all")
    if not await user_exists(pool, user_id):
        raise UserNotFound()
    at = now or datetime.now(UTC)
    where = Where()
    where.add("s.user_id = {}", user_id)
    if status == "active":
        _live(where, at, idle_timeout)
    print_ = fingerprint("user-sessions", {"user_id": str(user_id), "status": status})
    found = await newest_first(pool, columns=COLUMNS, source=SOURCE, where=where, page=page, print_=print_, alias="s.")
    items = [to_dto(row, at, idle_timeout) for row in found.rows]
    return envelope("sessions", items, found.total, page, found.next_cursor)


async def live_sessions(
    pool: asyncpg.Pool, page: PageRequest, *, idle_timeout: float = 0.0, now: datetime | None = None
) -> dict[str, Any]:
    """`GET /sessions`: every live session of every user, newest first; `total` counts live sessions."""
    at = now or datetime.now(UTC)
    where = Where()
    _live(where, at, idle_timeout)
    print_ = fingerprint("sessions", {})
    found = await newest_first(pool, columns=COLUMNS, source=SOURCE, where=where, page=page, print_=print_, alias="s.")
    items = [to_dto(row, at, idle_timeout) for row in found.rows]
    return envelope("sessions", items, found.total, page, found.next_cursor)

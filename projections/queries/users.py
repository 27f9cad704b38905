"""Queries on the `users` read model (SPEC §4.2 list, search, get; §4.4 stats), with asyncpg.

Results are plain dicts ready for JSON: AdminUserDTOs (SPEC §2.13) with RFC 3339 timestamps, in the list
envelope of §2.8. Lists are newest first (`created_at` then `id`, descending) with the real `total`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from pandora_users.domain.errors import UserNotFound
from pandora_users.domain.events import ERASED
from pandora_users.domain.user import KYC_STATUSES, ROLES
from pandora_users.infra.read_pool import in_snapshot
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
    "id, email, first_name, last_name, role, kyc_status, email_verified_at, created_at, updated_at,"
    " locked_until, deleted_at, erased_at, version"
)
LIVE = "deleted_at IS NULL AND erased_at IS NULL"
MAX_QUERY_LENGTH = 256
# The expression of the trigram index (schema/sql/003_read_models.sql); a search must use it verbatim.
SEARCH_TEXT = "(coalesce(email, '') || ' ' || first_name || ' ' || last_name)"
# Up to this many matches a search page sorts the trigram index's hits; above, it walks the created_at index.
TRIGRAM_FIRST_MAX = 1000

Statement = tuple[str, list[Any]]


@dataclass(frozen=True)
class UserFilters:
    """Filters of `GET /users`: `created_from` inclusive, `created_to` exclusive."""

    kyc_status: str | None = None
    role: str | None = None
    include_deleted: bool = False
    created_from: datetime | None = None
    created_to: datetime | None = None

    def validate(self) -> None:
        if self.kyc_status is not None and self.kyc_status not in KYC_STATUSES:
            raise invalid("kyc_status", "must be one of pending, verified, rejected")
        if self.role is not None and self.role not in ROLES:
            raise invalid("role", "must be one of user, admin")
        for name in ("created_from", "created_to"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise invalid(name, "must be an RFC 3339 timestamp with an offset")


def to_dto(row: Any, now: datetime) -> dict[str, Any]:
    """An AdminUserDTO from a users row (`[erased]` personal fields after erasure)."""
    locked_until = row["locked_until"]
    return {
        "id": str(row["id"]),
        "email": ERASED if row["email"] is None else row["email"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "role": row["role"],
        "kyc_status": row["kyc_status"],
        "email_verified": row["email_verified_at"] is not None,
        "email_verified_at": rfc3339_or_none(row["email_verified_at"]),
        "created_at": rfc3339(row["created_at"]),
        "updated_at": rfc3339(row["updated_at"]),
        "is_active": is_live(row),
        "is_locked": locked_until is not None and locked_until > now,
        "locked_until": rfc3339_or_none(locked_until),
        "deleted_at": rfc3339_or_none(row["deleted_at"]),
        "erased_at": rfc3339_or_none(row["erased_at"]),
        "version": row["version"],
    }


def list_where(filters: UserFilters) -> Where:
    where = Where()
    if not filters.include_deleted:
        where.add(LIVE)
    if filters.kyc_status is not None:
        where.add("kyc_status = {}", filters.kyc_status)
    if filters.role is not None:
        where.add("role = {}", filters.role)
    if filters.created_from is not None:
        where.add("created_at >= {}", filters.created_from)
    if filters.created_to is not None:
        where.add("created_at < {}", filters.created_to)
    return where


def escape_like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern (the default escape character is a backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def clean_query(query: str) -> str:
    text = query.strip()
    if not 1 <= len(text) <= MAX_QUERY_LENGTH or "\x00" in text:
        raise invalid("query", f"must be 1 to {MAX_QUERY_LENGTH} characters")
    return text


def _visible(include_deleted: bool) -> str:
    return LIVE if not include_deleted else "erased_at IS NULL"


def _matches(p: str) -> list[str]:
    """The index's expression (the trigram index answers it), then each field: a match across the joins never counts."""
    return [f"{SEARCH_TEXT} ILIKE {p}", f"(email ILIKE {p} OR first_name ILIKE {p} OR last_name ILIKE {p})"]


def search_where(query: str, include_deleted: bool) -> Where:
    """Case-insensitive substring of email, first or last name; erased users never match."""
    where = Where()
    where.add(_visible(include_deleted))
    where.conditions.extend(_matches(where.arg(f"%{escape_like(query)}%")))
    return where


def search_hits(query: str, include_deleted: bool) -> tuple[str, Where]:
    """The same search as `search_where`, as a source that finds the matches through the trigram index first.

    `OFFSET 0` fences the subquery: the planner can neither flatten it nor push the ORDER BY or the visibility
    filter into it, so it cannot walk a created_at index filtering every row (what it picks when it believes few
    rows exist, as right after a bulk load or a rebuild, before any ANALYZE).
    """
    where = Where()
    matches = Where(_matches(where.arg(f"%{escape_like(query)}%")))  # its `$1` is the outer statement's
    where.add(_visible(include_deleted))
    return f"({select(COLUMNS, 'users', matches, ' OFFSET 0')}) AS hits", where


def rows_sql(where: Where, key: list[Any] | None, page: PageRequest, source: str = "users") -> tuple[str, list[Any]]:
    """The page's SELECT (keyset after `key` when paging by cursor; one extra row tells if more follow)."""
    rows = where.copy()
    if key is not None:
        if len(key) != 2 or not isinstance(key[1], str):
            raise invalid("cursor", "invalid cursor")
        try:
            last_id = UUID(key[1])
        except ValueError:
            raise invalid("cursor", "invalid cursor") from None
        rows.add("(created_at, id) < ({}, {})", parse_ts(key[0], "cursor"), last_id)
    limit, offset = rows.arg(page.limit + 1), rows.arg(page.offset)
    return select(COLUMNS, source, rows, f" ORDER BY created_at DESC, id DESC LIMIT {limit} OFFSET {offset}"), rows.args


async def _page(
    pool: asyncpg.Pool,
    count: Statement,
    rows_for: Callable[[int], Statement],
    print_: str,
    page: PageRequest,
    now: datetime | None,
) -> dict[str, Any]:
    """The total, then the rows of the statement `rows_for(total)` picks, in one snapshot."""

    async def read(conn: asyncpg.Connection) -> tuple[int, list[asyncpg.Record]]:
        total = int(await conn.fetchval(count[0], *count[1]))
        text, args = rows_for(total)
        return total, await conn.fetch(text, *args) if total else []

    total, rows = await in_snapshot(pool, read)
    more, rows = len(rows) > page.limit, rows[: page.limit]
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = encode_cursor([rfc3339(last["created_at"]), str(last["id"])], print_)
    at = now or datetime.now(UTC)
    return envelope("users", [to_dto(row, at) for row in rows], total, page, next_cursor)


async def list_users(
    pool: asyncpg.Pool, filters: UserFilters, page: PageRequest, *, now: datetime | None = None
) -> dict[str, Any]:
    """`GET /users`: `{"users": [AdminUserDTO], "total", "limit", "offset", "next_cursor"}`."""
    filters.validate()
    print_ = fingerprint("users", asdict(filters))
    where = list_where(filters)
    rows = rows_sql(where, decode_cursor(page, print_), page)
    return await _page(pool, (select("count(*)", "users", where), where.args), lambda _: rows, print_, page, now)


async def search_users(
    pool: asyncpg.Pool,
    query: str,
    include_deleted: bool,
    page: PageRequest,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`GET /users/search`: the list envelope; `%` and `_` in `query` are literal.

    The total comes through the trigram index; a page of up to TRIGRAM_FIRST_MAX matches too (sorting a few
    matches beats filtering the created_at index), a page of more walks the created_at index, which soon meets
    enough of them.
    """
    text = clean_query(query)
    print_ = fingerprint("users/search", {"query": text, "include_deleted": include_deleted})
    key = decode_cursor(page, print_)
    source, hits = search_hits(text, include_deleted)
    few = rows_sql(hits, key, page, source)
    many = rows_sql(search_where(text, include_deleted), key, page)
    count = (select("count(*)", source, hits), hits.args)
    return await _page(pool, count, lambda total: few if total <= TRIGRAM_FIRST_MAX else many, print_, page, now)


USER_BY_ID = select(COLUMNS, "users", Where(["id = $1"]))


async def user_row(pool: asyncpg.Pool, user_id: UUID) -> asyncpg.Record:
    """The users row of an id, deleted and erased users too; UserNotFound if the id is unknown."""
    row = await pool.fetchrow(USER_BY_ID, user_id)
    if row is None:
        raise UserNotFound()
    return row


def is_live(row: Any) -> bool:
    """Neither soft-deleted nor erased."""
    return row["deleted_at"] is None and row["erased_at"] is None


async def get_user(pool: asyncpg.Pool, user_id: UUID, *, now: datetime | None = None) -> dict[str, Any]:
    """`GET /users/{id}`: deleted and erased users too; UserNotFound if the id is unknown."""
    return to_dto(await user_row(pool, user_id), now or datetime.now(UTC))


STATS = f"""
SELECT count(*) FILTER (WHERE {LIVE}) AS total_users,
       count(*) FILTER (WHERE NOT ({LIVE})) AS deleted_users,
       count(*) FILTER (WHERE {LIVE} AND kyc_status = 'pending') AS pending,
       count(*) FILTER (WHERE {LIVE} AND kyc_status = 'verified') AS verified,
       count(*) FILTER (WHERE {LIVE} AND kyc_status = 'rejected') AS rejected,
       count(*) FILTER (WHERE {LIVE} AND role = 'user') AS "user",
       count(*) FILTER (WHERE {LIVE} AND role = 'admin') AS admin
FROM users
"""  # noqa: S608 - constant text


async def user_stats(pool: asyncpg.Pool) -> dict[str, Any]:
    """SPEC §4.4 stats without `active_sessions` (see `active_sessions`): per-status and per-role of live users."""
    row = await pool.fetchrow(STATS)
    return {
        "total_users": row["total_users"],
        "deleted_users": row["deleted_users"],
        "users_by_kyc_status": {status: row[status] for status in KYC_STATUSES},
        "users_by_role": {role: row[role] for role in ROLES},
    }


async def active_sessions(pool: asyncpg.Pool, *, idle_timeout: float = 0.0, now: datetime | None = None) -> int:
    """Live sessions in the credential store: not ended, not expired, not idle (SPEC §6.3)."""
    at = now or datetime.now(UTC)
    text = "SELECT count(*) FROM sessions WHERE ended_at IS NULL AND expires_at > $1"
    args: list[Any] = [at]
    if idle_timeout > 0:
        text += " AND last_used_at > $2"
        args.append(at - timedelta(seconds=idle_timeout))
    return int(await pool.fetchval(text, *args))

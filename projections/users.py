"""The `users` read model: the admin user directory (SPEC §2.13 AdminUserDTO, §4.2).

Pure reducers turn one user-aggregate event into a `Statement`: the INSERT of a new row or an UPDATE that
sets constant values on one user's row (renderable as SQL text + params). A batch's statements are coalesced
to one per user (later assignments win, an INSERT absorbs the updates after it), then written with a few
multi-row statements inside the runner's batch transaction. The default target is the `users` view (a simple
auto-updatable view over `users_vN`), so a rebuild can fill the next table version and swap the view.

Events of other aggregates are ignored. Personal fields may already arrive as `[erased]` (the data key was
destroyed before this event was projected); an `[erased]` email is stored as NULL, as after erasure.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg import sql

from pandora_users.domain import events as ev
from projections.runner import Envelope

VIEW = "users"

USER_EVENTS: tuple[type[ev.DomainEvent], ...] = (
    ev.UserRegistered,
    ev.UserEmailVerified,
    ev.UserProfileUpdated,
    ev.UserPasswordChanged,
    ev.UserKycUpdated,
    ev.UserRoleChanged,
    ev.UserLocked,
    ev.UserUnlocked,
    ev.UserLoggedOutAll,
    ev.UserDeleted,
    ev.UserRestored,
    ev.UserErased,
)
TOPICS: tuple[str, ...] = tuple(cls.TOPIC for cls in USER_EVENTS)
SCRUB_ACCESS_LOG = (
    "UPDATE access_log SET actor_identifier = '[erased]', ip_address = NULL, user_agent = NULL"
    " WHERE user_id = ANY(%s) AND actor_identifier <> '[erased]'"
)
# The only events whose personal fields reach the table (a rebuild decodes the others without keys).
PERSONAL_TOPICS = frozenset({ev.UserRegistered.TOPIC, ev.UserProfileUpdated.TOPIC})

# Every column but `id`, with its SQL type (for the multi-row statements' typed arrays).
COLUMNS: dict[str, str] = {
    "email": "text",
    "first_name": "text",
    "last_name": "text",
    "role": "text",
    "kyc_status": "text",
    "email_verified_at": "timestamptz",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "locked_until": "timestamptz",
    "deleted_at": "timestamptz",
    "erased_at": "timestamptz",
    "version": "bigint",
    "position": "bigint",
}


# The notice each live batch sends in its transaction (delivered at commit, in commit order): "<position>" for the
# batch's last position, then " " and the comma-separated ids of the rows it changed, or " *" for "any row"
# (more than NOTICE_MAX_IDS rows, or a rebuild's swap). Serving processes keep rows by it
# (projections/queries/user_rows.py).
CHANGED_CHANNEL = "pandora_users_changed"
NOTICE_MAX_IDS = 100  # 3,700 bytes of ids; PostgreSQL's payload limit is 8,000
ALL = "*"


def change_notice(position: int, ids: Collection[UUID] | None) -> str:
    """The payload for a batch ending at `position` that changed the rows of `ids` (None: any row)."""
    if ids is None or len(ids) > NOTICE_MAX_IDS:
        return f"{position} {ALL}"
    return f"{position} {','.join(map(str, ids))}" if ids else str(position)


def parse_notice(payload: str) -> tuple[int, frozenset[UUID] | None]:
    """(position, ids) of a payload, ids None for any row; ValueError if it is not one."""
    position, _, ids = payload.partition(" ")
    if ids == ALL:
        return int(position), None
    return int(position), frozenset(UUID(i) for i in ids.split(",")) if ids else frozenset()


def notify(conn: psycopg.Connection[Any], position: int, ids: Collection[UUID] | None) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (CHANGED_CHANNEL, change_notice(position, ids)))


# From this many new users in one batch (a rebuild, a catch-up), they are COPYed rather than INSERTed.
COPY_FROM = 64


@dataclass(frozen=True)
class Statement:
    """A change of one user's row: `insert` a new row, or `update` the given columns to constant values."""

    op: Literal["insert", "update"]
    id: UUID
    values: dict[str, Any]

    @property
    def sql(self) -> str:
        """The statement alone, with `{table}` for the target (the batched path writes several at once)."""
        names = list(self.values)
        if self.op == "insert":
            placeholders = ", ".join(["%s"] * (len(names) + 1))
            return f"INSERT INTO {{table}} (id, {', '.join(names)}) VALUES ({placeholders})"  # noqa: S608
        assignments = ", ".join(f"{name} = %s" for name in names)
        return f"UPDATE {{table}} SET {assignments} WHERE id = %s"  # noqa: S608 - column names from code

    @property
    def params(self) -> tuple[Any, ...]:
        values = tuple(self.values.values())
        return (self.id, *values) if self.op == "insert" else (*values, self.id)


def _email(value: str) -> str | None:
    return None if value == ev.ERASED else value


def _changes(event: ev.DomainEvent) -> dict[str, Any]:
    """The columns a (non-registration) user event sets, besides version, updated_at and position."""
    match event:
        case ev.UserEmailVerified():
            return {"email_verified_at": event.verified_at}
        case ev.UserProfileUpdated():
            return {"first_name": event.first_name, "last_name": event.last_name}
        case ev.UserKycUpdated():
            return {"kyc_status": event.kyc_status}
        case ev.UserRoleChanged():
            return {"role": event.role}
        case ev.UserLocked():
            return {"locked_until": event.locked_until}
        case ev.UserUnlocked():
            return {"locked_until": None}
        case ev.UserDeleted():
            return {"deleted_at": event.deleted_at}
        case ev.UserRestored():
            return {"deleted_at": None}
        case ev.UserErased():
            return {"erased_at": event.erased_at, "email": None, "first_name": ev.ERASED, "last_name": ev.ERASED}
    return {}  # password changed, logged out everywhere: only the version and updated_at move


def reduce(event: ev.DomainEvent, position: int) -> list[Statement]:
    """The statements that apply one event at `position` to the users table (none for other aggregates)."""
    if not isinstance(event, USER_EVENTS):
        return []
    bookkeeping = {"version": event.originator_version, "updated_at": event.timestamp, "position": position}
    if isinstance(event, ev.UserRegistered):
        row = {
            "email": _email(event.email),
            "first_name": event.first_name,
            "last_name": event.last_name,
            "role": event.role,
            "kyc_status": event.kyc_status,
            "created_at": event.timestamp,
        }
        return [Statement("insert", event.originator_id, {**row, **bookkeeping})]
    return [Statement("update", event.originator_id, {**_changes(event), **bookkeeping})]


def coalesce(statements: Sequence[Statement]) -> list[Statement]:
    """One statement per user with the same end result (assignments are constants, so later ones win)."""
    merged: dict[UUID, Statement] = {}
    for statement in statements:
        earlier = merged.get(statement.id)
        if earlier is None:
            merged[statement.id] = statement
        elif statement.op == "update":
            merged[statement.id] = Statement(earlier.op, statement.id, {**earlier.values, **statement.values})
        else:
            raise ValueError(f"user {statement.id} registered twice")
    return list(merged.values())


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str) -> str:
    arrays = ", ".join(["%s::uuid[]", *(f"%s::{t}[]" for t in COLUMNS.values())])
    template = f"INSERT INTO {{}} (id, {', '.join(COLUMNS)}) SELECT * FROM unnest({arrays})"  # noqa: S608
    return sql.SQL(template).format(sql.Identifier(table)).as_string()


@functools.lru_cache(maxsize=64)
def _copy_sql(table: str) -> sql.Composed:
    return sql.SQL("COPY {} (id, {}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    )


@functools.lru_cache(maxsize=256)
def _update_sql(table: str, names: tuple[str, ...]) -> str:
    arrays = ", ".join(["%s::uuid[]", *(f"%s::{COLUMNS[n]}[]" for n in names)])
    assignments = ", ".join(f"{n} = v.{n}" for n in names)
    source = f"unnest({arrays}) AS v(id, {', '.join(names)})"
    template = f"UPDATE {{}} AS t SET {assignments} FROM {source} WHERE t.id = v.id"  # noqa: S608
    return sql.SQL(template).format(sql.Identifier(table)).as_string()


def execute(conn: psycopg.Connection[Any], table: str, statements: Sequence[Statement]) -> None:
    """Apply statements in order: coalesced per user, then one multi-row statement per shape."""
    changes = coalesce(statements)
    inserts = [c for c in changes if c.op == "insert"]
    updates: dict[tuple[str, ...], list[Statement]] = {}
    for change in changes:
        if change.op == "update":
            updates.setdefault(tuple(sorted(change.values)), []).append(change)
    with conn.cursor() as cur:
        if len(inserts) >= COPY_FROM:
            # A rebuild's registrations: binary COPY (rows packed in C) instead of one array per column, which
            # psycopg dumps element by element in Python (a quarter of a rebuild's time).
            with cur.copy(_copy_sql(table)) as copy:
                copy.set_types(["uuid", *COLUMNS.values()])
                for c in inserts:
                    copy.write_row([c.id, *(c.values.get(n) for n in COLUMNS)])
        elif inserts:
            columns = [[c.id for c in inserts]] + [[c.values.get(n) for c in inserts] for n in COLUMNS]
            cur.execute(_insert_sql(table), columns, prepare=True)
        for names, group in updates.items():
            columns = [[c.id for c in group]] + [[c.values[n] for c in group] for n in names]
            cur.execute(_update_sql(table, names), columns, prepare=True)


class UsersProjection:
    """Keeps the users table behind `table` (the view by default; a new version during a rebuild)."""

    topics = TOPICS

    def __init__(self, table: str = VIEW, name: str = "users") -> None:
        self.table = table
        self.name = name

    def apply(self, conn: psycopg.Connection[Any], batch: Sequence[Envelope]) -> None:
        statements = [s for env in batch for s in reduce(env.event, env.position)]
        execute(conn, self.table, statements)
        if self.table == VIEW and batch:  # the live table (a rebuild announces its swap instead)
            notify(conn, batch[-1].position, {s.id for s in statements})
        erased = [env.event.user_id for env in batch if isinstance(env.event, ev.UserErased)]
        if erased:  # SPEC §9.5 step 5: the user's access-log rows lose their personal data (idempotent)
            conn.execute(SCRUB_ACCESS_LOG, (erased,))

    def skipped(self, conn: psycopg.Connection[Any], position: int) -> None:
        """A parked event: no row changed, but the position moved, and the processes keeping rows must hear of
        it (a position that moves without a notice makes them take their LISTEN connection for a deaf one)."""
        if self.table == VIEW:
            notify(conn, position, ())

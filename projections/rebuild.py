"""Rebuild a read model from position 1 into a fresh table, then swap the view over to it (SPEC §11).

1. Create `<name>_vN+1` like the live table (the table behind the view), without its secondary indexes.
2. Fill it from position 1 in large batches (one transaction each, tracked as `<name>#rebuild`); build the
   indexes; ANALYZE it; catch up to the head. The live projection keeps serving and writing the old table meanwhile.
3. Swap in one transaction: lock the view against writers, lock the live tracking row, apply the events the
   live projection has and the new table lacks (or move the live position up to the new table's), point the
   view at the new table, and bump the epoch, so an in-flight live batch fails its compare-and-set and
   re-runs against the new table.
4. Drop the old table.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

import msgspec
import psycopg
from eventsourcing.persistence import Notification
from loguru import logger
from psycopg import sql
from psycopg.rows import tuple_row

from pandora_users.domain.events import DomainEvent
from pandora_users.store.app import EventStore
from pandora_users.store.keys import KeyStore, psycopg_fetcher
from pandora_users.store.mapper import PersonalDataMapper
from projections import event_log, users
from projections.runner import Envelope, Projection, advance, lock_id, read_tracking

SWAP_LOCK_TIMEOUT = "10s"
_INDEX_DEF = re.compile(r"^CREATE (UNIQUE )?INDEX (\S+) ON (\S+) (USING .*)$", re.DOTALL)

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Target:
    """A rebuildable read model: its events, its projection, and the events whose personal data it reads
    (the others are decoded without key lookups)."""

    name: str
    topics: tuple[str, ...]
    make: Callable[[str, str], Projection]
    personal: frozenset[str]


TARGETS = {
    "users": Target("users", users.TOPICS, users.UsersProjection, users.PERSONAL_TOPICS),
    "event_log": Target("event_log", event_log.TOPICS, event_log.EventLogProjection, frozenset()),
}
READ_MODELS = tuple(TARGETS)


class RebuildInProgress(Exception):
    """Another process is rebuilding this read model."""


@dataclass(frozen=True)
class RebuildProgress:
    name: str
    position: int
    head: int
    events: int


@dataclass(frozen=True)
class RebuildReport:
    """`events`: the events of the model's types applied; `position`: where the model now stands."""

    name: str
    old_table: str
    new_table: str
    position: int
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[RebuildProgress], None]


def rebuild_name(name: str) -> str:
    return f"{name}#rebuild"


class _NoKeys:
    """Decoding without key lookups, for events whose personal fields the model does not read."""

    def get(self, _user_id: UUID) -> None:
        return None


class _Subject(msgspec.Struct):
    user_id: UUID


class _BatchKeys:
    """Data keys for a whole batch in one query (one lookup per user would be one round trip each)."""

    def __init__(self, store: EventStore, kek: bytes) -> None:
        self._single = psycopg_fetcher(store.datastore)
        self._datastore = store.datastore
        self._wrapped: dict[UUID, bytes | None] = {}
        self.keys = KeyStore(kek, self._fetch)

    def _fetch(self, user_id: UUID) -> bytes | None:
        return self._wrapped[user_id] if user_id in self._wrapped else self._single(user_id)

    def prefetch(self, notifications: Sequence[Notification]) -> None:
        subjects = set()
        for notification in notifications:
            try:
                subjects.add(msgspec.json.decode(notification.state, type=_Subject).user_id)
            except msgspec.ValidationError:
                continue  # its decode fails later, and the event is parked
        self._wrapped = dict.fromkeys(subjects)
        if not subjects:
            return
        with self._datastore.get_connection() as conn:
            rows = conn.execute(
                "SELECT user_id, wrapped_key FROM subject_keys WHERE user_id = ANY(%s)", (list(subjects),)
            ).fetchall()
        self._wrapped.update((row["user_id"], bytes(row["wrapped_key"])) for row in rows)


class Filler:
    """Applies a model's events to the new table in large batches, tracked as `<name>#rebuild`."""

    def __init__(self, store: EventStore, target: Target, table: str, batch_size: int, kek: bytes | None) -> None:
        self.store, self.target, self.batch_size = store, target, batch_size
        self.projection = target.make(table, rebuild_name(target.name))
        self.position = 0
        self._keyless = PersonalDataMapper(_NoKeys())
        self._batch_keys = _BatchKeys(store, kek) if kek is not None else None
        self._personal = PersonalDataMapper(self._batch_keys.keys) if self._batch_keys else store.mapper

    def step(self) -> int:
        """The next batch in its own transaction; returns its number of events (0 at the head)."""
        with self.store.datastore.get_connection() as conn:
            tracking = read_tracking(conn, self.projection.name)
            notifications = self._select(tracking.position, None)
            if not notifications:
                return 0
            with conn.transaction():
                self._apply(conn, notifications)
                advance(conn, self.projection.name, tracking, notifications[-1].id)
        self.position = notifications[-1].id
        return len(notifications)

    def apply_range(self, conn: Conn, *, after: int, upto: int) -> int:
        """Apply the model's events in (after, upto] inside the caller's transaction."""
        applied = 0
        while after < upto and (notifications := self._select(after, upto)):
            self._apply(conn, notifications)
            applied += len(notifications)
            after = notifications[-1].id
        return applied

    def _select(self, after: int, upto: int | None) -> Sequence[Notification]:
        recorder = self.store.recorder
        return recorder.select_notifications(after + 1, self.batch_size, stop=upto, topics=self.target.topics)

    def _apply(self, conn: Conn, notifications: Sequence[Notification]) -> None:
        """The batch in a savepoint; if it fails, each event alone, parking those that still fail (as live)."""
        if self._batch_keys is not None:
            self._batch_keys.prefetch([n for n in notifications if n.topic in self.target.personal])
        try:
            with conn.transaction():
                self.projection.apply(conn, [self._envelope(n) for n in notifications])
        except Exception:  # noqa: BLE001 - a poison event somewhere in the batch
            for notification in notifications:
                self._apply_one(conn, notification)

    def _apply_one(self, conn: Conn, notification: Notification) -> None:
        try:
            with conn.transaction():
                self.projection.apply(conn, [self._envelope(notification)])
        except Exception as exc:  # noqa: BLE001 - parked like the runner parks it
            conn.execute(
                "INSERT INTO projection_failures (projection, position, topic, error, attempts)"
                " VALUES (%s, %s, %s, %s, 1) ON CONFLICT (projection, position) DO NOTHING",
                (self.projection.name, notification.id, notification.topic, f"{type(exc).__name__}: {exc}"[:2000]),
            )

    def _envelope(self, notification: Notification) -> Envelope:
        mapper = self._personal if notification.topic in self.target.personal else self._keyless
        return Envelope(notification.id, cast(DomainEvent, mapper.to_domain_event(notification)))


def rebuild(
    store: EventStore,
    conninfo: str,
    name: str,
    batch_size: int = 5000,
    progress_callback: ProgressCallback | None = None,
    *,
    kek: bytes | None = None,
) -> RebuildReport:
    """Rebuild one read model (`users` or `event_log`) while the live one keeps serving; swap atomically.

    With `kek` (DATA_ENCRYPTION_KEY) data keys are fetched a batch at a time; without, one lookup per user.
    """
    if name not in TARGETS:
        raise ValueError(f"cannot rebuild {name!r}; expected one of {', '.join(READ_MODELS)}")
    target = TARGETS[name]
    started = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True) as lease:
        _lock(lease, name)
        old = active_table(lease, name)
        new = f"{name}_v{_version(old) + 1}"
        deferred = _prepare(lease, name, old, new)
        filler = Filler(store, target, new, batch_size, kek)
        events = _fill(filler, store, progress_callback)
        for statement in deferred:
            lease.execute(statement)
        # Column statistics before the swap (autovacuum may be off or late): without them every filter gets a
        # default selectivity, and the plans of the list and search queries are chosen blind.
        lease.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(new)))
        events += _fill(filler, store, progress_callback)
        position, swapped = _swap(store, target, new, filler)
        lease.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(old)))
    report = RebuildReport(name, old, new, position, events + swapped, time.monotonic() - started)
    logger.info("rebuilt {} into {} to position {}: {}", name, new, position, report)
    return report


def rebuild_all(
    store: EventStore,
    conninfo: str,
    names: Sequence[str] = READ_MODELS,
    batch_size: int = 5000,
    progress_callback: ProgressCallback | None = None,
    *,
    kek: bytes | None = None,
) -> list[RebuildReport]:
    """Rebuild several read models, one after the other."""
    return [rebuild(store, conninfo, name, batch_size, progress_callback, kek=kek) for name in names]


def active_table(conn: psycopg.Connection[Any], view: str) -> str:
    """The table the view currently reads (its only dependency)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(
            "SELECT DISTINCT t.relname FROM pg_rewrite r JOIN pg_depend d ON d.objid = r.oid"
            " JOIN pg_class t ON t.oid = d.refobjid WHERE r.ev_class = to_regclass(%s) AND t.relkind = 'r'",
            (view,),
        )
        tables = [row[0] for row in cur.fetchall()]
    if len(tables) != 1:
        raise RuntimeError(f"view {view!r} should read exactly one table, found {tables}")
    return str(tables[0])


def _version(table: str) -> int:
    match = re.fullmatch(r".*_v(\d+)", table)
    if match is None:
        raise RuntimeError(f"table {table!r} has no version suffix")
    return int(match.group(1))


def _lock(lease: Conn, name: str) -> None:
    row = lease.execute("SELECT pg_try_advisory_lock(%s)", (lock_id(rebuild_name(name)),)).fetchone()
    if not row or not row[0]:
        raise RebuildInProgress(name)


def _prepare(lease: Conn, name: str, old: str, new: str) -> list[sql.Composed]:
    """Drop leftovers of an interrupted rebuild and create the new table; returns its deferred indexes."""
    leftovers = lease.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename ~ %s AND tablename <> %s",
        (f"^{re.escape(name)}_v[0-9]+$", old),
    ).fetchall()
    for (table,) in leftovers:
        lease.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(str(table))))
    lease.execute("DELETE FROM projection_positions WHERE name = %s", (rebuild_name(name),))
    lease.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(sql.Identifier(new), sql.Identifier(old)))
    for index, _ in _secondary_indexes(lease, new):
        lease.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
    return [_index_for(definition, index, old, new) for index, definition in _secondary_indexes(lease, old)]


def _secondary_indexes(conn: Conn, table: str) -> list[tuple[str, str]]:
    """(name, definition) of the indexes that back no constraint (the primary key stays during the fill)."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = to_regclass(%s)"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) ORDER BY c.relname",
        (table,),
    ).fetchall()
    return [(str(name), str(definition)) for name, definition in rows]


def _index_for(definition: str, index: str, old: str, new: str) -> sql.Composed:
    """The old table's index definition for the new table, named after the new version."""
    match = _INDEX_DEF.match(definition)
    if match is None:
        raise RuntimeError(f"unexpected index definition: {definition}")
    unique, _name, _table, rest = match.groups()
    suffix = index[len(old) :] if index.startswith(old + "_") else "_" + index
    return sql.SQL("CREATE {unique}INDEX {name} ON {table} {rest}").format(
        unique=sql.SQL(unique or ""),
        name=sql.Identifier((new + suffix)[:63]),
        table=sql.Identifier(new),
        rest=sql.SQL(rest),  # catalog text (pg_get_indexdef), not input
    )


def _fill(filler: Filler, store: EventStore, progress: ProgressCallback | None) -> int:
    """Batches until the head; returns the events applied."""
    events = 0
    while consumed := filler.step():
        events += consumed
        if progress is not None:
            progress(RebuildProgress(filler.target.name, filler.position, store.head_position(), events))
    return events


def _swap(store: EventStore, target: Target, new: str, filler: Filler) -> tuple[int, int]:
    """Point the view at the new table in one transaction; returns (position, events applied here)."""
    name = target.name
    with store.datastore.get_connection() as conn, conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(SWAP_LOCK_TIMEOUT)))
        # Writers first, then the tracking row: the live runner takes them in the same order.
        conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(name)))
        conn.execute("INSERT INTO projection_positions (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (name,))
        conn.execute("SELECT 1 FROM projection_positions WHERE name = %s FOR UPDATE", (name,))
        live, ours = read_tracking(conn, name), read_tracking(conn, rebuild_name(name))
        applied = filler.apply_range(conn, after=ours.position, upto=live.position)
        position = max(live.position, ours.position)
        view = sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT * FROM {}")
        conn.execute(view.format(sql.Identifier(name), sql.Identifier(new)))
        conn.execute(
            "UPDATE projection_positions SET position = %s, epoch = epoch + 1, updated_at = now() WHERE name = %s",
            (position, name),
        )
        conn.execute(
            "INSERT INTO read_model_tables (name, active_table, version) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET active_table = EXCLUDED.active_table, version = EXCLUDED.version,"
            " updated_at = now()",
            (name, new, _version(new)),
        )
        conn.execute("DELETE FROM projection_positions WHERE name = %s", (rebuild_name(name),))
        if name == users.VIEW:  # serving processes forget the rows they kept from the old table
            users.notify(conn, position, None)
    return position, applied

"""The projection runner: follows the event log in position order and applies a projection in batches.

- Exactly once: a batch's view changes and the new tracking position commit in one transaction, and the
  position moves by compare-and-set, so even two active instances could not apply a batch twice.
- One active instance per projection: a session-level advisory lock; other instances stand by and take over
  when the holder's connection goes away.
- Poison events: a failing batch is re-run event by event; an event that still fails after `attempts`
  tries (backoff 1 s doubling) is parked in `projection_failures` and the projection goes on.
- Wake-ups: LISTEN on the event store's channel, plus a pull every `idle_poll` seconds.

Delivery projections (revocations, forwarder) write outside PostgreSQL in `apply`; they are idempotent, so a
crash between their write and the position's commit only repeats harmless work.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from eventsourcing import persistence as es_persistence
from eventsourcing.persistence import Notification
from loguru import logger
from opentelemetry.context import Context as TraceContext

from pandora_users.domain.events import DomainEvent
from pandora_users.observability import metrics as m
from pandora_users.store.app import EVENTS_TABLE, EventStore
from projections.spans import consumer_spans


@dataclass(frozen=True)
class Envelope:
    """An event with its global position (and, when tracing, the context of its projection span)."""

    position: int
    event: DomainEvent
    trace: TraceContext | None = None


class Projection(Protocol):
    """A view kept by the runner. `apply` runs inside the batch's transaction (`conn` is in it).

    A projection may also define `skipped(conn, position)`: called in the transaction that parks a poison
    event, which moves the position past it without `apply` (the users projection announces the position).
    """

    name: str

    def apply(self, conn: psycopg.Connection[Any], batch: Sequence[Envelope]) -> None: ...


class LostLease(Exception):
    """The tracking position moved under us (another instance is active), or a dependency is down:
    roll back and stand down; the run loop backs off and takes the lease again. Never parks anything."""


# A lost or failing connection is an outage, never a poison event: up to run(), which reconnects.
OUTAGES: tuple[type[BaseException], ...] = (
    LostLease,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    es_persistence.OperationalError,
    es_persistence.InterfaceError,
)


def lock_id(name: str) -> int:
    """A stable 63-bit advisory-lock key per projection name."""
    return int.from_bytes(hashlib.sha256(f"pandora-projection:{name}".encode()).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class Tracking:
    """Where a projection is: its position, and the epoch of the table behind its view."""

    position: int
    epoch: int = 0


def read_tracking(conn: psycopg.Connection[Any], name: str) -> Tracking:
    row = conn.execute("SELECT position, epoch FROM projection_positions WHERE name = %s", (name,)).fetchone()
    if row is None:
        return Tracking(0)
    values = (row["position"], row["epoch"]) if isinstance(row, dict) else row
    return Tracking(int(values[0]), int(values[1]))


# The projection's tracking and the batch after it, in one round trip: exactly one row when nothing follows
# (notification_id NULL), else one row per event. A projection that never ran is at position 0, epoch 0.
NEXT_BATCH = (
    "SELECT t.position, t.epoch, e.notification_id, e.originator_id, e.originator_version, e.topic, e.state"  # noqa: S608
    " FROM (SELECT coalesce(max(position), 0) AS position, coalesce(max(epoch), 0) AS epoch"
    " FROM projection_positions WHERE name = %s) t"
    f" LEFT JOIN LATERAL (SELECT * FROM {EVENTS_TABLE} WHERE notification_id > t.position"
    " ORDER BY notification_id LIMIT %s) e ON true"
)


def next_batch(conn: psycopg.Connection[Any], name: str, limit: int) -> tuple[Tracking, list[Notification]]:
    """Where the projection is, and up to `limit` events after that position (read in one statement, so
    the batch always follows the position it was read with)."""
    rows = conn.execute(NEXT_BATCH, (name, limit), prepare=True).fetchall()  # dict rows: the event store's pool
    tracking = Tracking(int(rows[0]["position"]), int(rows[0]["epoch"]))
    notifications = [
        Notification(
            id=row["notification_id"],
            originator_id=row["originator_id"],
            originator_version=row["originator_version"],
            topic=row["topic"],
            state=bytes(row["state"]),
        )
        for row in rows
        if row["notification_id"] is not None
    ]
    return tracking, notifications


def read_position(conn: psycopg.Connection[Any], name: str) -> int:
    return read_tracking(conn, name).position


def advance(conn: psycopg.Connection[Any], name: str, old: Tracking, new: int) -> None:
    """Move the tracking position from `old` to `new` (same epoch), or raise LostLease."""
    cur = conn.execute(
        "INSERT INTO projection_positions AS p (name, position, epoch, updated_at) VALUES (%s, %s, %s, now())"
        " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()"
        " WHERE p.position = %s AND p.epoch = %s",
        (name, new, old.epoch, old.position, old.epoch),
    )
    if cur.rowcount != 1:
        raise LostLease(name)


class Runner:
    """Runs one projection; `run()` blocks (call it in a thread) until `stop()`."""

    def __init__(
        self,
        store: EventStore,
        conninfo: str,
        projection: Projection,
        *,
        batch_size: int = 100,
        idle_poll: float = 1.0,
        attempts: int = 3,
        backoff: float = 1.0,
    ) -> None:
        self.store = store
        self.conninfo = conninfo
        self.projection = projection
        self.batch_size = batch_size
        self.idle_poll = idle_poll
        self.attempts = attempts
        self.backoff = backoff
        self.active = threading.Event()
        self._stop = threading.Event()
        self.processed = 0

    @property
    def name(self) -> str:
        return self.projection.name

    def stop(self) -> None:
        self._stop.set()
        stop = getattr(self.projection, "stop", None)
        if callable(stop):  # delivery projections may be waiting for Redis inside apply()
            stop()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as lease:
                    if self._acquire(lease):
                        self._follow(lease)
            except OUTAGES as exc:
                logger.warning("projection {}: {}: {}; retrying", self.name, type(exc).__name__, exc)
                self.active.clear()
                self._stop.wait(self.idle_poll)
        self.active.clear()

    def _acquire(self, lease: psycopg.Connection[Any]) -> bool:
        """Wait as a standby until the advisory lock is ours (or we are told to stop)."""
        key = lock_id(self.name)
        while not self._stop.is_set():
            row = lease.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if row and row[0]:
                self.active.set()
                logger.info("projection {} active from position {}", self.name, read_position(lease, self.name))
                return True
            self._stop.wait(self.idle_poll)
        return False

    def _follow(self, lease: psycopg.Connection[Any]) -> None:
        lease.execute(f"LISTEN {EVENTS_TABLE}")
        while not self._stop.is_set():
            if self.step() == self.batch_size:
                continue  # a full batch: more may follow at once
            # Caught up with what was committed when the batch was read. A commit after that read has its NOTIFY
            # waiting on the lease connection (LISTEN was issued first), so this wait returns at once for it.
            notified = False
            for _ in lease.notifies(timeout=self.idle_poll, stop_after=1):
                notified = True
            if not notified:
                lease.execute("SELECT 1")  # idle: a dead lease connection surfaces here, and we stand down

    def step(self) -> int:
        """Process the next batch, if any; returns how many notifications were consumed."""
        with self.store.datastore.get_connection() as conn:
            tracking, notifications = next_batch(conn, self.name, self.batch_size)
            if not notifications:
                return 0
            self.store.forget_keys_erased_in((n.topic, n.originator_id) for n in notifications)
            try:
                self._apply(conn, tracking, notifications)
            except OUTAGES:
                raise
            except Exception as exc:  # noqa: BLE001 - a poison event somewhere in the batch
                logger.warning("projection {} batch after {} failed ({}); isolating", self.name, tracking.position, exc)
                self._one_by_one(conn, tracking, notifications)
        self.processed += len(notifications)
        m.projection_processed.labels(self.name).inc(len(notifications))
        return len(notifications)

    def _apply(self, conn: psycopg.Connection[Any], tracking: Tracking, notifications: Sequence[Notification]) -> None:
        batch = [self._envelope(n) for n in notifications]
        with consumer_spans(self.name, batch) as traced, conn.transaction():
            self.projection.apply(conn, traced)
            advance(conn, self.name, tracking, notifications[-1].id)

    def _envelope(self, notification: Notification) -> Envelope:
        return Envelope(notification.id, self.store.decode(notification))

    def _one_by_one(
        self, conn: psycopg.Connection[Any], tracking: Tracking, notifications: Sequence[Notification]
    ) -> None:
        for notification in notifications:
            error = ""
            for attempt in range(1, self.attempts + 1):
                try:
                    self._apply(conn, tracking, [notification])
                    break
                except OUTAGES:
                    raise
                except Exception as exc:  # noqa: BLE001 - retried, then parked below
                    error = f"{type(exc).__name__}: {exc}"[:2000]
                    m.projection_failures.labels(self.name).inc()
                    logger.error(
                        "projection {} failed on position {} ({}): {}",
                        self.name,
                        notification.id,
                        notification.topic,
                        error,
                    )
                    if attempt < self.attempts:
                        self._stop.wait(self.backoff * 2 ** (attempt - 1))
            else:
                self._park(conn, tracking, notification, error)
            tracking = Tracking(notification.id, tracking.epoch)

    def _park(self, conn: psycopg.Connection[Any], tracking: Tracking, notification: Notification, error: str) -> None:
        with conn.transaction():
            conn.execute(
                "INSERT INTO projection_failures (projection, position, topic, error, attempts)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (projection, position) DO NOTHING",
                (self.name, notification.id, notification.topic, error, self.attempts),
            )
            advance(conn, self.name, tracking, notification.id)
            skipped = getattr(self.projection, "skipped", None)  # optional: see Projection
            if skipped is not None:
                skipped(conn, notification.id)
        logger.error("projection {} parked position {} after {} attempts", self.name, notification.id, self.attempts)


def wait_until(store: EventStore, runner: Runner, position: int, timeout: float = 30.0) -> bool:
    """Test and CLI helper: block until the runner's tracking position reaches `position`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.datastore.get_connection() as conn:
            if read_position(conn, runner.name) >= position:
                return True
        time.sleep(0.01)
    return False

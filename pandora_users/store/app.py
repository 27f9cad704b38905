"""The event store: one eventsourcing `Application` over PostgreSQL with our mapper and recorder."""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import get_topic
from psycopg_pool import ConnectionPool

from pandora_users.domain.context import AggregateState
from pandora_users.domain.events import DomainEvent, UserErased, UserKycUpdated
from pandora_users.observability import metrics as m
from pandora_users.observability import tracing
from pandora_users.store.keys import KeyInvalidation, KeyStore, psycopg_fetcher
from pandora_users.store.mapper import PersonalDataMapper
from pandora_users.store.recent import RecentStates
from pandora_users.store.recorder import CredentialOp, PandoraRecorder, SerialRecorder

S = TypeVar("S")
A = TypeVar("A", bound=AggregateState)
# The command being run on this thread (metrics label); set by the commands' retry loop.
CURRENT_COMMAND: ContextVar[str] = ContextVar("pandora_command", default="other")
APP_NAME = "Pandora"
EVENTS_TABLE = "pandora_events"
ERASED_TOPIC = UserErased.TOPIC
CONNECT_PARAMS = "PANDORA_POSTGRES_PARAMS"
# A pooled connection not handed out for this long is pinged before use.
PING_IF_IDLE_FOR = 1.0


class PingIfIdle:
    """The pool's check when a connection is handed out: ping it only when it has not been handed out for
    `idle` seconds. The library's pre-ping pings every time, a round trip before every statement of the write
    side (three per refresh). A connection handed out within `idle` seconds was alive then; one that broke since
    fails its statement and the pool discards it, as it would between ping and statement.

    A failed ping usually means the server restarted and every pooled connection is dead: the pool would try
    them one by one, sleeping 1, 2, 4 s between tries, and time out. `on_broken` (the pool's `check`) replaces
    them all at once instead."""

    def __init__(self, idle: float, on_broken: Callable[[], None] | None = None) -> None:
        self.idle, self.on_broken = idle, on_broken
        self._handed_out: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = weakref.WeakKeyDictionary()

    def __call__(self, conn: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        if now - self._handed_out.get(conn, -math.inf) > self.idle:
            try:
                ConnectionPool.check_connection(conn)
            except psycopg.Error:
                if self.on_broken is not None:
                    self.on_broken()
                raise
        self._handed_out[conn] = now


class PandoraFactory(PostgresFactory):
    """The library's PostgreSQL factory, plus the libpq parameters of the URL (sslmode, sslrootcert, ...), and
    a pre-ping only of connections idle for a while (`PingIfIdle`).

    The library connects with dbname/host/port/user/password only; its pool opens at the first connection, after
    this constructor, so every connection gets the parameters.
    """

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        pool = self.datastore.pool
        assert isinstance(pool.kwargs, dict)  # the library passes a dict
        pool.kwargs.update(parse_qsl(self.env.get(CONNECT_PARAMS) or ""))
        # The library passes `check` only as pre-ping on or off (POSTGRES_PRE_PING); the pool keeps it here.
        assert pool._check is ConnectionPool.check_connection
        pool._check = PingIfIdle(PING_IF_IDLE_FOR, on_broken=pool.check)


def postgres_env(
    database_url: str,
    *,
    pool_size: int,
    max_overflow: int,
    lock_timeout: float,
    statement_timeout: float | None = None,
    group_commit: bool = True,
) -> dict[str, str]:
    """eventsourcing's POSTGRES_* settings from a postgresql:// URL (`group_commit=False` only to measure it).

    `statement_timeout` (seconds) bounds every statement of the pool's connections (serving processes only:
    the command line's migrations and rebuilds run longer statements)."""
    url = urlsplit(database_url)
    params = dict(parse_qsl(url.query))
    if statement_timeout is not None:
        timeout = f"-c statement_timeout={max(1, round(statement_timeout * 1000))}"
        params["options"] = f"{params['options']} {timeout}" if params.get("options") else timeout
    return {
        # libpq parameters of the URL's query (sslmode, sslrootcert, ...), added to the pool's connect arguments.
        CONNECT_PARAMS: urlencode(params),
        "PERSISTENCE_MODULE": get_topic(PandoraFactory),
        "APPLICATION_RECORDER_TOPIC": get_topic(PandoraRecorder if group_commit else SerialRecorder),
        "POSTGRES_DBNAME": unquote(url.path.lstrip("/")) or "postgres",
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(max_overflow),
        "POSTGRES_LOCK_TIMEOUT": str(max(1, round(lock_timeout))),
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "POSTGRES_PRE_PING": "y",
        "CREATE_TABLE": "n",
    }


class EventStore(Application[UUID]):
    """Loads aggregates and appends events atomically with credential-store operations."""

    name = APP_NAME

    def __init__(self, env: dict[str, str], kek: bytes) -> None:
        self.keys = KeyStore(kek, self._fetch_wrapped_key)
        self.recent_users: RecentStates[Any] = RecentStates(self.keys)
        super().__init__(env)

    def listen_for_key_destruction(self, conninfo: str) -> None:
        """Keep this process's key cache in step with erasures done by other processes."""
        self._invalidation = KeyInvalidation(self.keys, conninfo)
        self._invalidation.start()

    def close(self) -> None:
        invalidation = getattr(self, "_invalidation", None)
        if invalidation is not None:
            invalidation.stop()
        super().close()

    def construct_mapper(self) -> Mapper[UUID]:
        return PersonalDataMapper(self.keys)

    def _fetch_wrapped_key(self, user_id: UUID) -> bytes | None:
        return psycopg_fetcher(self.datastore)(user_id)

    @property
    def datastore(self) -> Any:
        return self.factory.datastore  # type: ignore[attr-defined]

    def load(self, aggregate_id: UUID, project: Callable[[S | None, Iterable[DomainEvent]], S | None]) -> S | None:
        """The aggregate's current state, or None when it has no events."""
        try:
            state: S = self.repository.get(aggregate_id, projector_func=project)  # type: ignore[type-var,assignment]
        except AggregateNotFoundError:
            return None
        return state

    def load_user(self, user_id: UUID, project: Callable[[A | None, Iterable[DomainEvent]], A | None]) -> A | None:
        """A user's current state: the latest state this process holds (see `RecentStates`) brought forward with
        the events stored after it, usually none or one, instead of every event decoded and folded again."""
        known: A | None = self.recent_users.latest(user_id)
        if known is None:
            state = self.load(user_id, project)
        else:
            newer = cast("Iterable[DomainEvent]", self.events.get(originator_id=user_id, gt=known.version))
            state = project(known, newer)
        if state is not None:
            self.recent_users.put(state)
        return state

    def load_user_at(
        self, user_id: UUID, version: int, project: Callable[[A | None, Iterable[DomainEvent]], A | None]
    ) -> A | None:
        """The user as this process last loaded it when that was at `version`, else loaded now: then its current
        state, which may be newer than `version`."""
        state: A | None = self.recent_users.get(user_id, version)
        return state if state is not None else self.load_user(user_id, project)

    def append(self, events: Sequence[DomainEvent], ops: Sequence[CredentialOp] = ()) -> int | None:
        """Commit events and credential operations together; the position of the last event (None if none)."""
        command = CURRENT_COMMAND.get()
        # The current span is the command's: its context goes into every event's metadata (SPEC §9.2, §12.3).
        events = tracing.stamp(events)
        attributes = {"db.system": "postgresql", "pandora.events.count": len(events)}
        with tracing.span("eventstore.append", kind=tracing.CLIENT, attributes=attributes) as span:
            started = time.perf_counter()
            try:
                recordings = self.save(*events, credential_ops=list(ops))
            except Exception:
                m.db_transactions.labels("error").inc()
                raise
            if recordings:
                span.set_attribute("pandora.position.first", recordings[0].notification.id)
                span.set_attribute("pandora.position.last", recordings[-1].notification.id)
        m.db_transactions.labels("ok").inc()
        m.append_duration.labels(command).observe(time.perf_counter() - started)
        for event in events:
            m.events_appended.labels(type(event).EVENT_TYPE or "internal").inc()
            if isinstance(event, UserKycUpdated):
                m.kyc_submissions.labels(event.kyc_status).inc()
        return recordings[-1].notification.id if recordings else None

    def forget_keys_erased_in(self, stored: Iterable[tuple[str, UUID | str]]) -> None:
        """Before decoding committed events, given as (topic, originator id): drop the cached data key of every
        user whose erasure is among them, so they decode as erased (SPEC §8.5) even while this process's cache
        has not yet heard of the erasure (the command drops it just after its commit, other processes when the
        key-destruction notice arrives: both may come after a reader woken by the same commit)."""
        for topic, originator_id in stored:
            if topic == ERASED_TOPIC:
                self.keys.forget(UUID(str(originator_id)))

    def decode(self, stored: StoredEvent) -> DomainEvent:
        """A stored event or notification as its domain event (personal fields decrypted or `[erased]`)."""
        event: DomainEvent = self.mapper.to_domain_event(stored)  # type: ignore[assignment]
        return event

    def create_tables(self) -> None:
        """Create the events table and its index (only migrations call this)."""
        self.recorder.create_table()  # type: ignore[attr-defined]

    def head_position(self) -> int:
        return self.recorder.max_notification_id() or 0

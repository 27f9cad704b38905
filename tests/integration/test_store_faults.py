"""Order and atomicity of the event store under concurrency and faults, on real PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from eventsourcing import persistence as es_persistence

from pandora_users.domain import session as session_agg
from pandora_users.domain import user as user_agg
from pandora_users.store import credentials as cred
from pandora_users.store.app import PING_IF_IDLE_FOR, EventStore, PingIfIdle, postgres_env
from pandora_users.store.recorder import CredentialOp, PandoraRecorder, connection_lost
from tests.conftest import TEST_KEK
from tests.unit.given import T0, ctx

WRITERS, EVENTS_PER_WRITER, PER_COMMIT = 8, 500, 10


def _sessions(store: EventStore, user_id: uuid.UUID, n: int) -> list[Any]:
    _key, wrapped = store.keys.new_key(user_id)
    store.append([], [cred.put_data_key(user_id, wrapped)])
    return [
        session_agg.log_in(
            uuid.uuid4(),
            user_id=user_id,
            email="w@example.com",
            audience="pandora-api",
            expires_at=T0,
            ip_address=None,
            user_agent=None,
            ctx=ctx(),
        )
        for _ in range(n)
    ]


def test_concurrent_writers_and_a_follower_see_every_event_once_in_order(event_store: EventStore) -> None:
    batches = [_sessions(event_store, uuid.uuid4(), EVENTS_PER_WRITER) for _ in range(WRITERS)]
    errors: list[BaseException] = []

    def write(events: list[Any]) -> None:
        try:
            for i in range(0, len(events), PER_COMMIT):
                event_store.append(events[i : i + PER_COMMIT])
        except BaseException as exc:
            errors.append(exc)

    seen: list[int] = []
    total = WRITERS * EVENTS_PER_WRITER

    def follow() -> None:
        with event_store.recorder.subscribe(gt=0) as subscription:
            for notification in subscription:
                seen.append(notification.id)
                if len(seen) == total:
                    break

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    writers = [threading.Thread(target=write, args=(b,)) for b in batches]
    for t in writers:
        t.start()
    for t in writers:
        t.join(120)
    follower.join(60)
    assert errors == []
    assert len(seen) == total and len(set(seen)) == total
    assert seen == sorted(seen)


@pytest.fixture
def kill_before_commit(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[None]:
    """Terminate the writer's backend after its INSERT and before its COMMIT."""
    original = PandoraRecorder._insert_stored_events

    def insert_then_die(self: PandoraRecorder, curs: Any, stored_events: Any, **kwargs: Any) -> None:
        original(self, curs, stored_events, **kwargs)
        pid = curs.connection.info.backend_pid
        with psycopg.connect(database_url, autocommit=True) as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (pid,))

    monkeypatch.setattr(PandoraRecorder, "_insert_stored_events", insert_then_die)
    yield
    monkeypatch.setattr(PandoraRecorder, "_insert_stored_events", original)


def test_connection_killed_between_insert_and_commit_leaves_nothing(
    event_store: EventStore, database_url: str, kill_before_commit: None
) -> None:
    uid = uuid.uuid4()
    _key, wrapped = event_store.keys.new_key(uid)
    registered = user_agg.register(uid, email="a@example.com", first_name="A", last_name="B", role="user", ctx=ctx())
    ops = [cred.put_data_key(uid, wrapped), cred.set_password(uid, "$argon2id$x", ctx().now)]
    with pytest.raises(Exception):  # noqa: B017 - any database error; the assertion is what was left behind
        event_store.append([registered], ops)
    with psycopg.connect(database_url) as conn:
        counts = [
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()
            for t in ("pandora_events", "subject_keys", "credentials")
        ]
    assert counts == [(0,), (0,), (0,)]


def _terminate_backend(database_url: str, pid: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_pooled_connection_is_pinged_only_after_it_was_idle(database_url: str) -> None:
    check = PingIfIdle(idle=0.3)
    with psycopg.connect(database_url) as conn:
        check(conn)  # never handed out before: pinged, and alive
        _terminate_backend(database_url, conn.info.backend_pid)
        check(conn)  # handed out a moment ago: trusted, no round trip (the broken link is not noticed)
        time.sleep(0.4)
        with pytest.raises(psycopg.OperationalError):
            check(conn)  # idle for longer: pinged, so the pool replaces it before anyone uses it


@pytest.mark.parametrize("pause", [0.0, PING_IF_IDLE_FOR + 0.2], ids=["retried", "pinged"])
def test_the_store_recovers_when_the_server_ends_its_connections(database_url: str, pause: float) -> None:
    """A database restart as the pool sees it. Right after it, the append fails on the dead connection (used a
    moment ago, so not pinged) and is retried on a new one; after a pause, the pool pings and replaces it."""
    store = EventStore(postgres_env(database_url, pool_size=1, max_overflow=0, lock_timeout=5), TEST_KEK)
    try:
        events = _sessions(store, uuid.uuid4(), 3)  # the one pooled connection has just been used
        with psycopg.connect(database_url, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert ended is not None and ended[0] >= 1
        time.sleep(pause)
        assert store.append(events) is not None
        assert store.load(events[0].originator_id, session_agg.project) is not None
    finally:
        store.close()


def test_a_statement_past_the_timeout_fails_the_append_alone_and_is_not_retried(database_url: str) -> None:
    """DB_STATEMENT_TIMEOUT on the write side (serving processes): PostgreSQL cancels the statement (57014), the
    append fails with nothing written and is not taken for a lost connection (no retry); the pool serves on."""
    env = postgres_env(database_url, pool_size=1, max_overflow=0, lock_timeout=5, statement_timeout=0.2)
    store = EventStore(env, TEST_KEK)
    calls: list[int] = []

    class Slow(CredentialOp):
        def send(self, curs: Any) -> None:
            calls.append(1)
            super().send(curs)

    try:
        events = _sessions(store, uuid.uuid4(), 2)
        head = store.head_position()
        with pytest.raises(es_persistence.OperationalError) as failed:
            store.append(events, [Slow("slow", "SELECT pg_sleep(2)")])
        assert isinstance(failed.value.__cause__, psycopg.errors.QueryCanceled)
        assert not connection_lost(failed.value)
        assert calls == [1]
        assert store.head_position() == head
        assert store.append(events) is not None
    finally:
        store.close()

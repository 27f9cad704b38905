"""The projection runner on real PostgreSQL: order, exactly-once tracking, standby takeover, poison parking."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest

from pandora_users.domain import events as ev
from pandora_users.domain import session as session_agg
from pandora_users.store import credentials as cred
from pandora_users.store.app import EventStore
from projections.runner import Envelope, Runner, read_position, wait_until
from tests.unit.given import T0, ctx


class Recording:
    """A projection that records positions into a table, and can be told to fail on one position."""

    name = "recording"

    def __init__(self, poison: int | None = None) -> None:
        self.poison = poison

    def apply(self, conn: psycopg.Connection[Any], batch: Sequence[Envelope]) -> None:
        for envelope in batch:
            if envelope.position == self.poison:
                raise RuntimeError("poison")
            conn.execute("INSERT INTO seen (position) VALUES (%s)", (envelope.position,))


def _append_sessions(store: EventStore, n: int) -> int:
    user_id = uuid.uuid4()
    _key, wrapped = store.keys.new_key(user_id)
    events = [
        session_agg.log_in(
            uuid.uuid4(),
            user_id=user_id,
            email="a@b.co",
            audience="pandora-api",
            expires_at=T0,
            ip_address=None,
            user_agent=None,
            ctx=ctx(),
        )
        for _ in range(n)
    ]
    position = store.append(events, [cred.put_data_key(user_id, wrapped)])
    assert position is not None
    return position


@pytest.fixture
def seen_table(database_url: str) -> Iterator[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE seen (position bigint PRIMARY KEY)")
    yield database_url


def _start(runner: Runner) -> threading.Thread:
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return thread


def _seen(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT position FROM seen ORDER BY position")]


def test_follows_in_order_exactly_once(event_store: EventStore, seen_table: str) -> None:
    first = _append_sessions(event_store, 250)
    runner = Runner(event_store, seen_table, Recording(), batch_size=100, idle_poll=0.2)
    thread = _start(runner)
    assert wait_until(event_store, runner, first)
    last = _append_sessions(event_store, 30)
    assert wait_until(event_store, runner, last)
    runner.stop()
    thread.join(10)
    assert _seen(seen_table) == list(range(1, last + 1))


def test_standby_takes_over_when_the_active_one_stops(event_store: EventStore, seen_table: str) -> None:
    a = Runner(event_store, seen_table, Recording(), idle_poll=0.2)
    b = Runner(event_store, seen_table, Recording(), idle_poll=0.2)
    ta = _start(a)
    assert a.active.wait(5)
    tb = _start(b)
    position = _append_sessions(event_store, 10)
    assert wait_until(event_store, a, position)
    assert not b.active.is_set()
    a.stop()
    ta.join(10)
    assert b.active.wait(5)
    position = _append_sessions(event_store, 10)
    assert wait_until(event_store, b, position)
    b.stop()
    tb.join(10)
    assert _seen(seen_table) == list(range(1, position + 1))


def test_poison_event_is_parked_and_later_events_still_projected(event_store: EventStore, seen_table: str) -> None:
    last = _append_sessions(event_store, 20)
    runner = Runner(event_store, seen_table, Recording(poison=7), attempts=2, backoff=0.01, idle_poll=0.2)
    thread = _start(runner)
    assert wait_until(event_store, runner, last)
    runner.stop()
    thread.join(10)
    assert _seen(seen_table) == [p for p in range(1, last + 1) if p != 7]
    with psycopg.connect(seen_table) as conn:
        parked = conn.execute("SELECT position, topic, attempts, error FROM projection_failures").fetchall()
        assert read_position(conn, "recording") == last
    assert parked == [(7, ev.SessionLoggedIn.TOPIC, 2, "RuntimeError: poison")]


def test_recovers_after_its_connections_are_killed(event_store: EventStore, seen_table: str) -> None:
    """A database restart, as seen by the runner: every connection dies; nothing is parked or lost."""
    runner = Runner(event_store, seen_table, Recording(), idle_poll=0.2)
    thread = _start(runner)
    first = _append_sessions(event_store, 20)
    assert wait_until(event_store, runner, first)
    with psycopg.connect(seen_table, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    last = _append_sessions(event_store, 20)
    assert wait_until(event_store, runner, last, timeout=30)
    runner.stop()
    thread.join(10)
    assert thread.is_alive() is False
    assert _seen(seen_table) == list(range(1, last + 1))
    with psycopg.connect(seen_table) as conn:
        assert conn.execute("SELECT count(*) FROM projection_failures").fetchone() == (0,)


class Slow(Recording):
    """Takes its time over every batch, so commits keep landing while it applies one."""

    def apply(self, conn: psycopg.Connection[Any], batch: Sequence[Envelope]) -> None:
        time.sleep(0.02)
        super().apply(conn, batch)


def test_commits_during_a_batch_wake_it_without_the_idle_poll(event_store: EventStore, seen_table: str) -> None:
    """After a partial batch the runner waits for the next NOTIFY instead of reading again at once: a commit
    made while it was busy must still wake it (its NOTIFY waits on the lease connection). The idle poll is
    60 s here, so a lost wake-up would stall the runner past the deadline."""
    runner = Runner(event_store, seen_table, Slow(), idle_poll=60)
    thread = _start(runner)
    assert runner.active.wait(5)
    writers = [threading.Thread(target=lambda: [_append_sessions(event_store, 1) for _ in range(15)]) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    last = _append_sessions(event_store, 1)
    assert wait_until(event_store, runner, last, timeout=10)
    runner.stop()
    _append_sessions(event_store, 1)  # the wake-up that lets it see the stop
    thread.join(10)
    assert not thread.is_alive()
    assert _seen(seen_table)[:last] == list(range(1, last + 1))

"""Group commit on real PostgreSQL: concurrent appends share transactions, conflicts fail alone, order holds.

Batches are made deterministic without timing: another connection holds the events table's lock while appends
queue behind the leader (which waits for it), then lets go.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError

from pandora_users.commands import authentication as auth
from pandora_users.commands import registration
from pandora_users.domain import session as session_agg
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.store import credentials as cred
from pandora_users.store.app import EventStore, postgres_env
from pandora_users.store.group_commit import Combiner
from pandora_users.store.recorder import CredentialConflict, CredentialOp, PandoraRecorder, SerialRecorder
from tests.conftest import TEST_KEK, make_write_side
from tests.integration.test_registration import PASSWORD, reg
from tests.unit.given import T0, ctx

LOGGED_IN = "pandora.session.logged_in"


@dataclass(eq=False)
class Command:
    """One append as a command makes it, and what it got back (a position or an exception)."""

    kind: str
    events: list[Any]
    ops: list[CredentialOp]
    outcome: Any = None


@pytest.fixture
def store(database_url: str) -> Iterator[EventStore]:
    """The event store, with a lock timeout long enough for appends to wait behind a held table lock."""
    s = EventStore(postgres_env(database_url, pool_size=4, max_overflow=16, lock_timeout=60), TEST_KEK)
    yield s
    s.close()


def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait for a state of the system, not for a duration: fail only if it never comes."""
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)


@contextmanager
def table_locked(database_url: str) -> Iterator[Callable[[], int]]:
    """Hold the events table's EXCLUSIVE lock; yields how many sessions wait for it."""
    with psycopg.connect(database_url) as conn:
        conn.execute("LOCK TABLE pandora_events IN EXCLUSIVE MODE")

        def waiting() -> int:
            sql = "SELECT count(*) FROM pg_locks WHERE relation = 'pandora_events'::regclass AND NOT granted"
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row else 0

        yield waiting
        conn.commit()


def users(store: EventStore, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    events, ops = [], []
    for uid in ids:
        _key, wrapped = store.keys.new_key(uid)
        email = f"{uid.hex[:8]}@example.com"
        events.append(user_agg.register(uid, email=email, first_name="A", last_name="B", role="user", ctx=ctx()))
        ops.append(cred.put_data_key(uid, wrapped))
    store.append(events, ops)
    return ids


def login(user_id: uuid.UUID, extra: CredentialOp | None = None) -> Command:
    """Two sessions opened in one append: each a logged-in event plus its session and refresh-token rows."""
    command = Command("good" if extra is None else extra.name, [], [])
    for _ in range(2):
        sid, expires = uuid.uuid4(), T0 + timedelta(days=1)
        command.events.append(
            session_agg.log_in(
                sid,
                user_id=user_id,
                email="s@example.com",
                audience="pandora-api",
                expires_at=expires,
                ip_address=None,
                user_agent=None,
                ctx=ctx(),
            )
        )
        command.ops += cred.open_session(
            cred.NewSession(sid, user_id, "pandora-api", T0, expires, None, None, os.urandom(32))
        )
    if extra is not None:  # a statement that fails: a compare-and-set that misses, or a constraint violated
        command.ops.append(extra)
    return command


def session_rows(database_url: str) -> tuple[set[uuid.UUID], set[uuid.UUID], int]:
    """Session ids in the sessions table, in logged-in events, and the number of refresh tokens."""
    with psycopg.connect(database_url) as conn:
        rows = {r[0] for r in conn.execute("SELECT id FROM sessions")}
        events = {r[0] for r in conn.execute("SELECT originator_id FROM pandora_events WHERE topic = %s", (LOGGED_IN,))}
        tokens = conn.execute("SELECT count(*) FROM refresh_tokens").fetchone()
    return rows, events, int(tokens[0]) if tokens else 0


def terminate(database_url: str, conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(database_url, autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))


def start(store: EventStore, commands: list[Command]) -> list[threading.Thread]:
    def run(command: Command) -> None:
        try:
            command.outcome = store.append(command.events, command.ops)
        except Exception as exc:
            command.outcome = exc

    threads = [threading.Thread(target=run, args=(c,)) for c in commands]
    for t in threads:
        t.start()
    return threads


def batched(store: EventStore, database_url: str, commands: list[Command]) -> None:
    """The first command commits alone; all the others queue behind it, so they share the next transaction."""
    with table_locked(database_url) as lock_waiters:
        threads = start(store, commands[:1])
        eventually(lambda: lock_waiters() == 1, "the leader waits for the table lock")
        threads += start(store, commands[1:])
        combiner = store.recorder.combiner  # type: ignore[attr-defined]
        eventually(lambda: combiner.waiting() == len(commands), "every append is queued")
    for t in threads:
        t.join(120)


def test_fifty_concurrent_appends_commit_once_in_order_and_conflicts_fail_alone(
    store: EventStore, database_url: str
) -> None:
    ids = users(store, 10)
    first = [store.load(uid, user_agg.project) for uid in ids]
    stale = [Command("stale", user_agg.change_role(u, "admin", ctx=ctx()), []) for u in first[:5]]
    for u in first[:5]:  # version 2 of these users is written now: the stale appends above will conflict
        store.append(user_agg.change_role(u, "admin", ctx=ctx(1)))
    racing = [Command("racing", user_agg.change_role(u, "admin", ctx=ctx()), []) for u in first[5:] for _ in (1, 2)]
    good = [login(ids[i % 10]) for i in range(27)]
    cas = [login(ids[i], cred.end_session(uuid.uuid4(), "logged_out", T0)) for i in range(5)]  # no such session
    taken = [login(ids[i], cred.put_data_key(ids[i], b"key")) for i in range(3)]  # the user has a key already
    rest = [*good[1:], *stale, *racing, *cas, *taken]
    random.Random(8).shuffle(rest)
    commands = [good[0], *rest]
    assert len(commands) == 50
    expected = 15 + 2 * len(good) + len(racing) // 2

    seen: list[Any] = []

    def follow() -> None:
        with store.recorder.subscribe(gt=0) as subscription:
            for notification in subscription:
                seen.append(notification)
                if len(seen) == expected:
                    break

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    commits: list[int] = []
    store.recorder.on_commit = commits.append  # type: ignore[attr-defined]
    batched(store, database_url, commands)
    follower.join(60)

    assert commits == [1, 26 + 5], "the leader alone, then the 49 queued appends in one transaction"
    assert all(type(c.outcome) is int for c in good)
    assert all(type(c.outcome) is IntegrityError for c in [*stale, *taken])
    assert all(type(c.outcome) is CredentialConflict and c.outcome.name == "end_session" for c in cas)
    for pair in zip(racing[::2], racing[1::2], strict=True):
        assert sorted(type(c.outcome).__name__ for c in pair) == ["IntegrityError", "int"]

    positions = [n.id for n in seen]
    assert len(seen) == expected and positions == sorted(set(positions)), "every position once, in order"
    assert len({(n.originator_id, n.originator_version) for n in seen}) == expected
    index = {n.id: i for i, n in enumerate(seen)}
    for c in good:  # a command's events are contiguous: consecutive positions, next to each other in the log
        last = c.outcome
        assert index[last] == index[last - 1] + 1
        assert [seen[index[p]].originator_id for p in (last - 1, last)] == [e.originator_id for e in c.events]

    sessions = {e.originator_id for c in good for e in c.events}
    assert session_rows(database_url) == (sessions, sessions, len(sessions))
    assert store.head_position() == positions[-1]


def test_a_batch_without_conflicts_is_one_insert_and_each_caller_gets_its_own_positions(
    store: EventStore, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = users(store, 4)
    inserted: list[int] = []
    insert = PandoraRecorder._insert_stored_events

    def counting(self: PandoraRecorder, curs: Any, stored_events: Any, **kwargs: Any) -> None:
        inserted.append(len(stored_events))
        insert(self, curs, stored_events, **kwargs)

    monkeypatch.setattr(PandoraRecorder, "_insert_stored_events", counting)
    commands = [login(ids[i % 4]) for i in range(20)]
    batched(store, database_url, commands)

    assert inserted == [2, 38], "the leader's append alone, then one INSERT for the 19 queued behind it"
    log = {n.id: n for n in store.recorder.select_notifications(start=1, limit=100)}
    for c in commands:
        assert [log[p].originator_id for p in (c.outcome - 1, c.outcome)] == [e.originator_id for e in c.events]
    sessions = {e.originator_id for c in commands for e in c.events}
    assert session_rows(database_url) == (sessions, sessions, 40)


async def test_logins_through_the_write_side_share_transactions_and_their_rows_match_their_events(
    store: EventStore, database_url: str
) -> None:
    w = make_write_side(store)
    try:
        emails = [f"user{i}@example.com" for i in range(16)]
        for email in emails:
            await registration.register(w, reg(email), Context())
        commits: list[int] = []
        store.recorder.on_commit = commits.append  # type: ignore[attr-defined]
        combiner = store.recorder.combiner  # type: ignore[attr-defined]
        with table_locked(database_url):
            logins = [asyncio.create_task(auth.log_in(w, auth.LoginAttempt(e, PASSWORD), Context())) for e in emails]
            deadline = time.monotonic() + 60
            while combiner.waiting() < 8:  # every write thread is in an append, behind the held lock
                assert time.monotonic() < deadline, "the write threads never all reached their appends"
                await asyncio.sleep(0.005)
        outcomes = await asyncio.gather(*logins)
    finally:
        w.close()
        w.hasher.close()

    assert sum(commits) == 16 and max(commits) >= 4, "the 8 appends queued together took at most 2 transactions"
    rows, logged_in, tokens = session_rows(database_url)
    assert {o.grant.session_id for o in outcomes} <= rows
    assert rows == logged_in and len(rows) == tokens == 32  # 16 from registering, 16 from logging in


def kill_after(database_url: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """`method`, then the backend of its connection is terminated: the COMMIT that follows fails."""

    def run(self: PandoraRecorder, conn: psycopg.Connection[Any], *args: Any) -> Any:
        result = method(self, conn, *args)
        terminate(database_url, conn)
        return result

    return run


def test_a_connection_lost_at_commit_fails_every_append_of_the_batch_with_todays_error(
    store: EventStore, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (uid,) = users(store, 1)
    serial = EventStore(
        postgres_env(database_url, pool_size=1, max_overflow=0, lock_timeout=5, group_commit=False), TEST_KEK
    )
    original = PandoraRecorder._insert_stored_events
    with monkeypatch.context() as patch:

        def insert_then_die(self: PandoraRecorder, curs: Any, stored_events: Any, **kwargs: Any) -> None:
            original(self, curs, stored_events, **kwargs)
            terminate(database_url, curs.connection)

        patch.setattr(PandoraRecorder, "_insert_stored_events", insert_then_die)
        today = login(uid)
        start(serial, [today])[0].join(60)
    serial.close()

    for name in ("_append_alone", "_append_together"):
        monkeypatch.setattr(PandoraRecorder, name, kill_after(database_url, getattr(PandoraRecorder, name)))
    commands = [login(uid) for _ in range(5)]
    batched(store, database_url, commands)

    assert isinstance(today.outcome, Exception)
    assert [type(c.outcome) for c in commands] == [type(today.outcome)] * 5
    assert len({id(c.outcome) for c in commands}) == 5, "each caller raises its own exception object"
    with psycopg.connect(database_url) as conn:
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone() for t in ("pandora_events", "sessions")]
    assert counts == [(1,), (0,)]


def test_group_commit_off_commits_each_append_in_its_own_transaction(database_url: str) -> None:
    env = postgres_env(database_url, pool_size=2, max_overflow=0, lock_timeout=5, group_commit=False)
    serial = EventStore(env, TEST_KEK)
    try:
        assert type(serial.recorder) is SerialRecorder
        commits: list[int] = []
        serial.recorder.on_commit = commits.append  # type: ignore[attr-defined]
        (uid,) = users(serial, 1)
        commands = [login(uid) for _ in range(6)]
        for t in start(serial, commands):
            t.join(60)
        assert commits == [1] * 7 and all(type(c.outcome) is int for c in commands)
    finally:
        serial.close()


def test_a_leader_that_cannot_begin_fails_its_batch_and_the_next_caller_leads() -> None:
    release, calls = threading.Event(), []

    def commit(take: Callable[[], list[Any]]) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            release.wait()  # no connection yet; meanwhile three more requests queue
            raise OSError("no connection")
        for request in take():
            request.succeed(request.payload * 10)

    combiner: Combiner[int, int] = Combiner(commit, max_batch=64)
    outcomes: dict[int, Any] = {}

    def submit(n: int) -> None:
        try:
            outcomes[n] = combiner.submit(n)
        except OSError as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(4)]
    threads[0].start()
    eventually(lambda: len(calls) == 1, "the first caller leads")
    for t in threads[1:]:
        t.start()
    eventually(lambda: combiner.waiting() == 4, "three more requests queue")
    release.set()
    for t in threads:
        t.join(60)
    assert all(isinstance(outcomes[n], OSError) for n in range(4))
    assert combiner.submit(7) == 70 and combiner.waiting() == 0

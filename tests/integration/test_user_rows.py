"""Users rows kept in a serving process (projections/queries/user_rows.py) against the real users projector's
notices on real PostgreSQL: kept until a change is announced, never served older than a wanted position, never
kept when read before an announced change, forgotten when the LISTEN connection or the table goes."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import psycopg
import pytest

from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.store.app import EventStore
from projections.queries.user_rows import UserRows
from projections.rebuild import rebuild
from projections.runner import Envelope, Runner, wait_until
from projections.users import UsersProjection
from tests.integration.test_read_models import Live, Seeded, project_to_head, seed_user


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=4) as pool:
        yield pool


Listen = Callable[..., Awaitable[UserRows]]


@pytest.fixture
async def listening(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[Listen]:
    """Start a UserRows (over `pool`, or the pool given) once it listens; closed after the test."""
    started: list[UserRows] = []

    async def start(over: Any = pool, **options: Any) -> UserRows:
        rows = UserRows(over, functools.partial(asyncpg.connect, database_url), **options)
        started.append(rows)
        rows.start()
        await until(lambda: rows.through is not None)
        return rows

    yield start
    for rows in started:
        await rows.close()


def rename(store: EventStore, user_id: UUID, first: str) -> int:
    """Append a profile change (not projected yet); its position."""
    state = store.load(user_id, user_agg.project)
    assert state is not None
    position = store.append(user_agg.update_profile(state, first_name=first, last_name=None, ctx=Context()))
    assert position is not None
    return position


async def projected(store: EventStore, database_url: str) -> None:
    await asyncio.to_thread(project_to_head, store, database_url, ("users",))


async def ann_kept(store: EventStore, database_url: str, listening: Listen) -> tuple[UserRows, Seeded]:
    """A user Ann, projected, whose row a listening UserRows keeps."""
    ann = seed_user(store, email="ann@example.com")
    await projected(store, database_url)
    rows = await listening()
    await rows.load(ann.id)
    return rows, ann


async def test_a_row_is_kept_until_a_notice_names_it(
    event_store: EventStore, database_url: str, listening: Listen
) -> None:
    ann, bob = seed_user(event_store, email="ann@example.com"), seed_user(event_store, email="bob@example.com")
    await projected(event_store, database_url)
    rows = await listening()
    assert (await rows.load(ann.id))["first_name"] == "Ann"
    await rows.load(bob.id)
    kept = rows.kept(ann.id, ann.position)
    assert kept is not None and kept[0]["first_name"] == "Ann" and kept[1] >= ann.position
    position = rename(event_store, ann.id, "Anna")
    assert rows.kept(ann.id, position) is None  # not announced yet: a read of it goes to PostgreSQL
    await projected(event_store, database_url)
    await until(lambda: (rows.through or 0) >= position)
    assert rows.kept(ann.id, 0) is None  # named by the notice: dropped
    kept_bob = rows.kept(bob.id, position)  # not named: kept, and current through the notice's position
    assert kept_bob is not None and kept_bob[1] >= position
    row, reached = await rows.row(ann.id, position, pytest.fail)  # read again, no wait needed
    assert row["first_name"] == "Anna" and reached >= position
    assert rows.kept(ann.id, position) is not None


async def test_a_wanted_position_beyond_the_notices_waits_and_reads_postgres(
    event_store: EventStore, database_url: str, listening: Listen
) -> None:
    rows, ann = await ann_kept(event_store, database_url, listening)
    position = rename(event_store, ann.id, "Anna")  # the caller's own write, not projected yet
    waited: list[int] = []

    async def wait(wanted: int) -> int:
        waited.append(wanted)
        await projected(event_store, database_url)
        return wanted

    row, reached = await rows.row(ann.id, position, wait)
    assert waited == [position] and reached >= position
    assert row["first_name"] == "Anna"


class GatedPool:
    """A pool whose fetchrow returns only when the test lets it (after the statement ran)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.ran = asyncio.Event()
        self.go = asyncio.Event()

    async def fetchrow(self, query: str, *args: Any) -> Any:
        row = await self.pool.fetchrow(query, *args)
        self.ran.set()
        await self.go.wait()
        return row


async def test_a_row_read_before_an_announced_change_is_used_once_and_not_kept(
    event_store: EventStore, database_url: str, pool: asyncpg.Pool, listening: Listen
) -> None:
    ann = seed_user(event_store, email="ann@example.com")
    await projected(event_store, database_url)
    gated = GatedPool(pool)
    rows = await listening(gated)
    loading = asyncio.create_task(rows.load(ann.id))
    await gated.ran.wait()  # the statement saw "Ann"
    position = rename(event_store, ann.id, "Anna")
    await projected(event_store, database_url)
    await until(lambda: (rows.through or 0) >= position)  # the notice arrived before the row did
    gated.go.set()
    assert (await loading)["first_name"] == "Ann"
    assert rows.kept(ann.id, 0) is None


async def test_a_lost_listen_connection_forgets_every_row_and_listening_resumes(
    event_store: EventStore, database_url: str, listening: Listen
) -> None:
    rows, ann = await ann_kept(event_store, database_url, listening)
    pid = rows.listener_pid
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    await until(lambda: rows.through is None)
    assert len(rows) == 0 and rows.kept(ann.id, 0) is None
    position = rename(event_store, ann.id, "Anna")  # changed while nobody listened
    await projected(event_store, database_url)
    await until(lambda: rows.through is not None and rows.listener_pid != pid)
    row, _ = await rows.row(ann.id, 0, pytest.fail)
    assert row["first_name"] == "Anna" and rows.kept(ann.id, position) is not None


async def test_a_rebuild_swap_forgets_every_row(event_store: EventStore, database_url: str, listening: Listen) -> None:
    users = [seed_user(event_store, email=f"u{i}@example.com") for i in range(3)]
    await projected(event_store, database_url)
    rows = await listening()
    for user in users:
        await rows.load(user.id)
    assert len(rows) == 3
    report = await asyncio.to_thread(rebuild, event_store, database_url, "users")
    await until(lambda: len(rows) == 0)
    assert (rows.through or 0) >= report.position
    row, _ = await rows.row(users[0].id, report.position, pytest.fail)  # read from the rebuilt table
    assert row["email"] == "u0@example.com"


async def test_rows_beyond_capacity_leave_least_recently_used_first(
    event_store: EventStore, database_url: str, listening: Listen
) -> None:
    a, b, c, d = (seed_user(event_store, email=f"{n}@example.com") for n in "abcd")
    await projected(event_store, database_url)
    rows = await listening(capacity=2)
    for user in (a, b, c):
        await rows.load(user.id)
    assert rows.kept(a.id, 0) is None and len(rows) == 2
    assert rows.kept(b.id, 0) is not None  # b is now the most recent
    await rows.load(d.id)
    assert rows.kept(c.id, 0) is None and rows.kept(b.id, 0) is not None and rows.kept(d.id, 0) is not None


async def test_nothing_is_kept_or_served_before_listening(
    event_store: EventStore, database_url: str, pool: asyncpg.Pool
) -> None:
    ann = seed_user(event_store, email="ann@example.com")
    await projected(event_store, database_url)
    rows = UserRows(pool, functools.partial(asyncpg.connect, database_url))  # never started
    assert (await rows.load(ann.id))["email"] == "ann@example.com"
    assert len(rows) == 0 and rows.kept(ann.id, 0) is None
    assert await rows.load(UUID(int=1)) is None


class DeafConnection:
    """A real connection whose LISTEN hears nothing (as through a transaction-mode pooler)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    async def add_listener(self, *_: object) -> None:
        return None


async def test_a_connection_that_hears_no_notices_is_found_out_within_two_pings(
    event_store: EventStore, database_url: str, pool: asyncpg.Pool
) -> None:
    ann = seed_user(event_store, email="ann@example.com")
    await projected(event_store, database_url)

    async def connect() -> Any:
        return DeafConnection(await asyncpg.connect(database_url))

    rows = UserRows(pool, connect, ping_interval=0.2)
    rows.start()
    try:
        await until(lambda: rows.through is not None)
        await rows.load(ann.id)
        assert rows.kept(ann.id, 0) is not None
        position = rename(event_store, ann.id, "Anna")
        await projected(event_store, database_url)
        assert rows.kept(ann.id, position) is None  # the writer's own read never takes the kept row
        started = time.monotonic()
        await until(lambda: rows.through is None)
        assert time.monotonic() - started < 1.0 and len(rows) == 0
    finally:
        await rows.close()


async def test_a_listening_connection_under_steady_writes_is_never_taken_for_deaf(
    event_store: EventStore, database_url: str, listening: Listen
) -> None:
    ann = seed_user(event_store, email="ann@example.com")
    rows = await listening(ping_interval=0.05)
    pid, lapses = rows.listener_pid, 0
    with Live(event_store, database_url):
        for i in range(40):
            position = await asyncio.to_thread(rename, event_store, ann.id, f"Ann{i}")
            row, reached = await rows.row(ann.id, position, lambda wanted: until_through(rows, wanted))
            assert row["first_name"] == f"Ann{i}" and reached >= position
            lapses += rows.through is None
            await asyncio.sleep(0.02)
    assert lapses == 0 and rows.listener_pid == pid


async def until_through(rows: UserRows, wanted: int) -> int:
    await until(lambda: (rows.through or 0) >= wanted)
    return wanted


class Poisoned(UsersProjection):
    """The live users projection, failing on one position (a poison event the runner parks)."""

    def __init__(self, poison: int) -> None:
        super().__init__()
        self.poison = poison

    def apply(self, conn: psycopg.Connection[Any], batch: Sequence[Envelope]) -> None:
        if any(env.position == self.poison for env in batch):
            raise RuntimeError("poison")
        super().apply(conn, batch)


async def test_a_parked_event_is_announced_so_listeners_are_not_taken_for_deaf(
    event_store: EventStore, database_url: str, listening: Listen
) -> None:
    """Parking moves the users position without applying the event: a listener that heard of no move would
    be taken for deaf at its next ping (all rows forgotten, a reconnection) though nothing is wrong."""
    ann = seed_user(event_store, email="ann@example.com")
    await projected(event_store, database_url)
    rows = await listening(ping_interval=0.05)
    pid = rows.listener_pid
    renamed = rename(event_store, ann.id, "Anna")
    poison = rename(event_store, ann.id, "Poison")  # the last event: nothing after it announces a later position
    runner = Runner(event_store, database_url, Poisoned(poison), attempts=1, backoff=0.01, idle_poll=0.05)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(wait_until, event_store, runner, poison)
        lapses = 0
        for _ in range(20):  # ten ping intervals
            lapses += rows.through is None
            await asyncio.sleep(0.025)
    finally:
        runner.stop()
        await asyncio.to_thread(thread.join, 10)
    assert lapses == 0 and rows.listener_pid == pid and rows.through is not None and rows.through >= poison
    row, _ = await rows.row(ann.id, renamed, lambda wanted: until_through(rows, wanted))
    assert row["first_name"] == "Anna"  # the parked rename was not applied

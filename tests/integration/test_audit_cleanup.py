"""The retention job on real PostgreSQL (SPEC §9.4): batches, session and link-token purge, lock, dry run."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from pandora_users.audit.cleanup import LOCK_ID, CleanupReport, cleanup_forever, run_cleanup

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
THIRTY_DAYS = 30 * 24 * 3600.0


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield created
    await created.close()


async def add_access_log(pool: asyncpg.Pool, n: int, retention_until: datetime) -> None:
    await pool.executemany(
        "INSERT INTO access_log (id, created_at, event_type, category, severity, status, status_code, listener,"
        " method, route, actor_type, actor_identifier, duration_ms, retention_until, is_sensitive)"
        " VALUES ($1, $2, 'authz_admin', 'data_access', 'info', 'success', 200, 'admin', 'GET', '/r', 'admin',"
        " 'a@example.com', 1, $3, true)",
        [(uuid.uuid4(), retention_until - 30 * DAY, retention_until) for _ in range(n)],
    )


async def add_session(pool: asyncpg.Pool, *, ended: timedelta | None, expires: timedelta) -> uuid.UUID:
    """A session that ended `ended` ago (None: never) and expires at NOW + `expires`, with a refresh token."""
    sid = uuid.uuid4()
    await pool.execute(
        "INSERT INTO sessions (id, user_id, audience, created_at, last_used_at, expires_at, ended_at)"
        " VALUES ($1, $2, 'pandora-api', $3, $3, $4, $5)",
        sid, uuid.uuid4(), NOW - 60 * DAY, NOW + expires, None if ended is None else NOW - ended,
    )  # fmt: skip
    await pool.execute(
        "INSERT INTO refresh_tokens (token_hash, session_id, generation) VALUES ($1, $2, 0)", os.urandom(32), sid
    )
    return sid


async def add_link(
    pool: asyncpg.Pool, *, used: int | None = None, superseded: int | None = None, expired: int = -1
) -> bytes:
    """A link token used / superseded that many days ago, and expired `expired` days ago (negative: future)."""
    token = os.urandom(32)
    await pool.execute(
        "INSERT INTO link_tokens (token_hash, user_id, purpose, created_at, expires_at, used_at, superseded_at)"
        " VALUES ($1, $2, 'password_reset', $3, $4, $5, $6)",
        token, uuid.uuid4(), NOW - 30 * DAY, NOW - expired * DAY,
        None if used is None else NOW - used * DAY, None if superseded is None else NOW - superseded * DAY,
    )  # fmt: skip
    return token


async def add_event(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO pandora_events (originator_id, originator_version, topic, state) VALUES ($1, 1, 't', 's')",
        uuid.uuid4(),
    )


async def ids(pool: asyncpg.Pool, query: str) -> set[object]:
    return {r[0] for r in await pool.fetch(query)}


async def test_expired_rows_go_in_batches_and_the_rest_stays(pool: asyncpg.Pool) -> None:
    await add_access_log(pool, 25, NOW - DAY)
    await add_access_log(pool, 5, NOW + DAY)
    old_ended = await add_session(pool, ended=timedelta(days=31), expires=DAY)
    old_expired = await add_session(pool, ended=None, expires=-31 * DAY)
    recent_ended = await add_session(pool, ended=DAY, expires=DAY)
    live = await add_session(pool, ended=None, expires=7 * DAY)
    recently_expired = await add_session(pool, ended=None, expires=-29 * DAY)
    purged_links = {await add_link(pool, used=8), await add_link(pool, superseded=8), await add_link(pool, expired=8)}
    kept_links = {await add_link(pool, used=6), await add_link(pool, superseded=1), await add_link(pool, expired=6)}
    kept_links.add(await add_link(pool))
    for _ in range(3):
        await add_event(pool)

    report = await run_cleanup(pool, batch_size=10, session_record_retention=THIRTY_DAYS, pause=0.01)

    assert (report.access_log, report.sessions, report.link_tokens) == (25, 2, 3)
    assert report.batches == 3 + 1 + 1 and report.complete and not report.skipped
    assert await pool.fetchval("SELECT count(*) FROM access_log WHERE retention_until >= now()") == 5
    assert await pool.fetchval("SELECT count(*) FROM access_log") == 5
    assert await ids(pool, "SELECT id FROM sessions") == {recent_ended, live, recently_expired}
    assert await ids(pool, "SELECT session_id FROM refresh_tokens") == {recent_ended, live, recently_expired}
    assert not {old_ended, old_expired} & await ids(pool, "SELECT session_id FROM refresh_tokens")
    remaining_links = await ids(pool, "SELECT token_hash FROM link_tokens")
    assert remaining_links == kept_links and not purged_links & remaining_links
    assert await pool.fetchval("SELECT count(*) FROM pandora_events") == 3


async def test_dry_run_counts_and_deletes_nothing(pool: asyncpg.Pool) -> None:
    await add_access_log(pool, 12, NOW - DAY)
    await add_session(pool, ended=timedelta(days=40), expires=DAY)
    await add_link(pool, used=10)
    report = await run_cleanup(pool, batch_size=100, session_record_retention=THIRTY_DAYS, dry_run=True)
    assert report.dry_run and (report.access_log, report.sessions, report.link_tokens) == (12, 1, 1)
    assert report.total == 14 and report.batches == 0
    assert await pool.fetchval("SELECT count(*) FROM access_log") == 12
    assert await pool.fetchval("SELECT count(*) FROM sessions") == 1
    assert await pool.fetchval("SELECT count(*) FROM link_tokens") == 1


async def test_a_run_skips_while_another_replica_holds_the_lock(pool: asyncpg.Pool) -> None:
    await add_access_log(pool, 3, NOW - DAY)
    async with pool.acquire() as other:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_ID)
        report = await run_cleanup(pool, batch_size=100, session_record_retention=THIRTY_DAYS)
        assert report.skipped and report.total == 0
        await other.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
    assert await pool.fetchval("SELECT count(*) FROM access_log") == 3
    assert (await run_cleanup(pool, batch_size=100, session_record_retention=THIRTY_DAYS)).access_log == 3


async def test_two_concurrent_runs_one_skips(pool: asyncpg.Pool) -> None:
    await add_access_log(pool, 500, NOW - DAY)
    reports = await asyncio.gather(
        *(run_cleanup(pool, batch_size=100, session_record_retention=THIRTY_DAYS, pause=0.05) for _ in range(2))
    )
    assert sorted(r.skipped for r in reports) == [False, True]
    assert sum(r.access_log for r in reports) == 500
    assert await pool.fetchval("SELECT count(*) FROM access_log") == 0


async def test_the_time_budget_stops_a_run_and_the_next_continues(pool: asyncpg.Pool) -> None:
    await add_access_log(pool, 300, NOW - DAY)
    cut = await run_cleanup(pool, batch_size=100, session_record_retention=THIRTY_DAYS, max_runtime=0.15, pause=0.1)
    assert not cut.complete and 0 < cut.access_log < 300
    rest = await run_cleanup(pool, batch_size=100, session_record_retention=THIRTY_DAYS)
    assert rest.complete and cut.access_log + rest.access_log == 300


async def test_cleanup_forever_runs_at_start_and_then_every_interval(pool: asyncpg.Pool) -> None:
    await add_access_log(pool, 2, NOW - DAY)
    reports: list[CleanupReport] = []
    task = asyncio.create_task(
        cleanup_forever(pool, 0.2, on_report=reports.append, batch_size=100, session_record_retention=THIRTY_DAYS)
    )
    try:
        await asyncio.sleep(0.1)
        assert len(reports) == 1 and reports[0].access_log == 2
        await add_access_log(pool, 1, NOW - DAY)
        await asyncio.sleep(0.3)
        assert len(reports) == 2 and reports[1].access_log == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

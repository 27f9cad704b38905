"""The read pool on real PostgreSQL: a read whose connection dies under it is answered from a new connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from pandora_users.infra.read_pool import DATABASE_OUTAGES, create_read_pool, in_snapshot

SLOW = "SELECT 41 + 1 FROM pg_sleep(0.3)"


async def _killed_while_running(pool: asyncpg.Pool, read: Callable[[], Awaitable[object]]) -> object:
    """Run `read` (a slow statement) and terminate its backend while it runs; what `read` returns."""
    running = asyncio.create_task(read())
    async with pool.acquire() as other:  # not the reading connection: the pool has two
        while not (pid := await other.fetchval("SELECT pid FROM pg_stat_activity WHERE query = $1", SLOW)):
            await asyncio.sleep(0.01)
        assert await other.fetchval("SELECT pg_terminate_backend($1)", pid)
    return await running


async def _in_snapshot(pool: asyncpg.Pool) -> object:
    async def read(conn: asyncpg.Connection) -> object:
        assert await conn.fetchval("SELECT current_setting('transaction_read_only')") == "on"
        return await conn.fetchval(SLOW)

    return await in_snapshot(pool, read)


READS: dict[str, tuple[Callable[[asyncpg.Pool], Awaitable[object]], Callable[[object], object]]] = {
    "fetch": (lambda pool: pool.fetch(SLOW), lambda rows: rows[0][0]),
    "fetchrow": (lambda pool: pool.fetchrow(SLOW), lambda row: row[0]),
    "fetchval": (lambda pool: pool.fetchval(SLOW), lambda value: value),
    "in_snapshot": (_in_snapshot, lambda value: value),
}


@pytest.mark.parametrize("method", READS)
async def test_a_read_whose_connection_is_killed_is_answered(database_url: str, method: str) -> None:
    pool = await create_read_pool(database_url, min_size=2, max_size=2, statement_timeout=5)
    read, value = READS[method]
    try:
        assert value(await _killed_while_running(pool, lambda: read(pool))) == 42
        # Every connection opened before the kill was replaced; the pool serves on.
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_asyncpgs_own_pool_fails_that_read(database_url: str) -> None:
    """What `ReadPool` exists for: the plain pool hands the lost connection's error to the request."""
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=2)
    try:
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.exceptions.AdminShutdownError)):
            await _killed_while_running(pool, lambda: pool.fetchval(SLOW))
    finally:
        await pool.close()


async def test_a_second_loss_is_not_retried(database_url: str) -> None:
    """One retry, not a loop: a database that keeps dropping connections gives the error (a 503 upstream)."""
    pool = await create_read_pool(database_url, min_size=2, max_size=2, statement_timeout=5)

    async def kill_both_attempts() -> object:
        reading = asyncio.create_task(pool.fetchval(SLOW))
        killed: set[int] = set()
        async with pool.acquire() as other:
            while len(killed) < 2:
                rows = await other.fetch("SELECT pid FROM pg_stat_activity WHERE query = $1", SLOW)
                for pid in {r[0] for r in rows} - killed:
                    await other.fetchval("SELECT pg_terminate_backend($1)", pid)
                    killed.add(pid)
                await asyncio.sleep(0.01)
        return await reading

    try:
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.exceptions.AdminShutdownError)):
            await kill_both_attempts()
    finally:
        await pool.close()


async def test_a_statement_longer_than_the_timeout_is_cancelled_and_not_retried(database_url: str) -> None:
    """DB_STATEMENT_TIMEOUT: PostgreSQL cancels the statement (an outage: 503), the connection stays usable."""
    pool = await create_read_pool(database_url, min_size=1, max_size=1, statement_timeout=0.2)
    try:
        assert await pool.fetchval("SHOW statement_timeout") == "200ms"
        with pytest.raises(asyncpg.exceptions.QueryCanceledError):
            await pool.fetchval("SELECT 1 FROM pg_sleep(2)")
        assert isinstance(asyncpg.exceptions.QueryCanceledError(), DATABASE_OUTAGES)
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_reads_that_lose_their_connections_together_replace_the_pool_once(database_url: str) -> None:
    """A restart fails every read in flight: the first replaces the connections, the others only retry."""
    pool = await create_read_pool(database_url, min_size=3, max_size=3, statement_timeout=5)
    try:
        reads = [asyncio.create_task(pool.fetchval(SLOW)) for _ in range(2)]
        async with pool.acquire() as other:
            while len(pids := await other.fetch("SELECT pid FROM pg_stat_activity WHERE query = $1", SLOW)) < 2:
                await asyncio.sleep(0.01)
            await other.fetch("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", [r[0] for r in pids])
        assert await asyncio.gather(*reads) == [42, 42]
        assert pool._generation == 1  # asyncpg's count of expire_connections() calls
    finally:
        await pool.close()

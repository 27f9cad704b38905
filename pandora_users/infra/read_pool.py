"""The read side's asyncpg pool, which rides out a lost database connection instead of failing requests.

After a PostgreSQL restart or failover every pooled connection is dead. asyncpg notices it only when the
server's goodbye has been read; a request that takes such a connection just before gets a connection error
(or, racing the goodbye, an `InternalClientError`). `ReadPool` answers a lost connection on a single-statement
read (`fetch`, `fetchrow`, `fetchval`, which only ever read here) by expiring every pooled connection (they
were all on the same server) and running the statement once more on a new one. Reads are safe to repeat; the
pool's writers (the access-log COPY, the retention job) use `acquire()` and are not retried. Reads of several
statements run through `in_snapshot`, which retries the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import psycopg
from eventsourcing import persistence as es_persistence
from loguru import logger

T = TypeVar("T")
CONNECT_TIMEOUT = 5.0  # as the write side's (POSTGRES_CONNECT_TIMEOUT)

# The connection is gone (or its protocol state is): another connection may well succeed.
LOST_CONNECTION: tuple[type[BaseException], ...] = (
    ConnectionError,
    asyncpg.PostgresConnectionError,  # 08xxx and "connection was closed in the middle of operation"
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # "cannot switch to state ...": the server's goodbye raced the query
    asyncpg.exceptions.AdminShutdownError,  # 57P01: terminated by an administrator or a fast shutdown
    asyncpg.exceptions.CrashShutdownError,  # 57P02
)

# A database that cannot be reached (or a statement cut short) is "service unavailable", never an internal error.
DATABASE_OUTAGES: tuple[type[BaseException], ...] = (
    OSError,  # includes ConnectionError and TimeoutError (a pool acquire that timed out)
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,  # statement timeout, admin shutdown, cannot connect now
    psycopg.OperationalError,
    es_persistence.OperationalError,
    es_persistence.InterfaceError,
)


async def retried_once(pool: asyncpg.Pool, attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()`; after it lost its connection, every pooled connection is replaced and it runs once more.

    After a restart every read in flight fails at once: only the first to fail replaces the connections (asyncpg
    counts `expire_connections()` calls in `_generation`), or each would close the ones the others reopened."""
    generation = pool._generation
    try:
        return await attempt()
    except LOST_CONNECTION as exc:
        if pool._generation == generation:
            logger.warning("read pool: a connection was lost ({}: {}); reconnecting", type(exc).__name__, exc)
            await pool.expire_connections()
    return await attempt()


async def in_snapshot(pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """`work` in one read-only REPEATABLE READ transaction (its statements see one snapshot), on a new
    connection once more if it lost its own. `work` must only read."""

    async def attempt() -> T:
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await work(conn)

    return await retried_once(pool, attempt)


class ReadPool(asyncpg.Pool):  # type: ignore[misc]  # asyncpg ships no type information
    """`asyncpg.Pool` whose single-statement reads are retried once on a new connection after losing theirs."""

    async def fetch(self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None) -> Any:
        return await retried_once(
            self, lambda: super(ReadPool, self).fetch(query, *args, timeout=timeout, record_class=record_class)
        )

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None) -> Any:
        return await retried_once(
            self, lambda: super(ReadPool, self).fetchrow(query, *args, timeout=timeout, record_class=record_class)
        )

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        return await retried_once(
            self, lambda: super(ReadPool, self).fetchval(query, *args, column=column, timeout=timeout)
        )


# asyncpg cancels the statement of a cancelled task (a caller that left) over a new connection; when the server
# closes that connection during its TLS negotiation, asyncpg leaves the error in a future nobody awaits
# (MagicStack/asyncpg#1310, open), and asyncio logs it at ERROR when the future is collected.
_UNRETRIEVED = "Future exception was never retrieved"
_CANCEL_CONNECTION_LOST = "unexpected connection_lost() call"


def is_asyncpg_cancel_noise(context: dict[str, Any]) -> bool:
    exc = context.get("exception")
    return (
        context.get("message") == _UNRETRIEVED and type(exc) is ConnectionError and str(exc) == _CANCEL_CONNECTION_LOST
    )


def quiet_asyncpg_cancel_noise(loop: asyncio.AbstractEventLoop) -> None:
    """Log asyncpg#1310's leftover at DEBUG instead of as an error; every other report goes where it went."""
    previous = loop.get_exception_handler()
    if getattr(previous, "quiets_asyncpg_cancel_noise", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if is_asyncpg_cancel_noise(context):
            logger.debug("asyncpg: a cancel request's connection closed during TLS negotiation (asyncpg#1310)")
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.quiets_asyncpg_cancel_noise = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


async def create_read_pool(
    dsn: str, *, min_size: int, max_size: int, statement_timeout: float, reset: Any = None
) -> ReadPool:
    """What `asyncpg.create_pool` does (with its defaults for the rest), with `ReadPool` as the class.

    `statement_timeout` (seconds, DB_STATEMENT_TIMEOUT): PostgreSQL cancels a longer statement, and the request
    gets 503 `service_unavailable` (SPEC §10.1). Connecting gives up after `CONNECT_TIMEOUT` seconds.
    """
    quiet_asyncpg_cancel_noise(asyncio.get_running_loop())
    pool = ReadPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        reset=reset,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        timeout=CONNECT_TIMEOUT,
        server_settings={"statement_timeout": str(max(1, round(statement_timeout * 1000)))},
    )
    await pool
    return pool

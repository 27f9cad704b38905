"""The retention job (SPEC §9.4): expired access-log rows, old session records and old link tokens.

One replica at a time (a PostgreSQL advisory lock; the others skip). Rows go in batches, one transaction
per batch with a short pause between, for at most `max_runtime` seconds (the next run continues). Events
are never touched: no statement here names the event store.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from loguru import logger

LOCK_ID: Final = int.from_bytes(hashlib.sha256(b"pandora-users audit cleanup").digest()[:8], "big") >> 1
LINK_TOKEN_RETENTION: Final = 7 * 24 * 3600.0

# Each target: the rows past retention ($1 = seconds of extra retention), and how to delete a batch ($2).
_EXPIRED_ACCESS_LOG = "FROM access_log WHERE retention_until < now() - make_interval(secs => $1)"
# LEAST ignores NULLs: a session is over at its end or its expiry, whichever came first.
_OLD_SESSIONS = "FROM sessions WHERE LEAST(ended_at, expires_at) < now() - make_interval(secs => $1)"
_OLD_LINK_TOKENS = (
    "FROM link_tokens WHERE LEAST(used_at, superseded_at, expires_at) < now() - make_interval(secs => $1)"
)
TARGETS: Final = {
    "access_log": ("id", _EXPIRED_ACCESS_LOG),
    "sessions": ("id", _OLD_SESSIONS),  # refresh_tokens go with them (ON DELETE CASCADE)
    "link_tokens": ("token_hash", _OLD_LINK_TOKENS),
}


@dataclass
class CleanupReport:
    """What one run did (or, in a dry run, would do). `complete` is false when `max_runtime` cut it short."""

    skipped: bool = False
    dry_run: bool = False
    access_log: int = 0
    sessions: int = 0
    link_tokens: int = 0
    batches: int = 0
    complete: bool = True
    duration: float = 0.0

    @property
    def total(self) -> int:
        return self.access_log + self.sessions + self.link_tokens


async def run_cleanup(
    pool: asyncpg.Pool,
    *,
    batch_size: int,
    session_record_retention: float,
    max_runtime: float = 1800,
    dry_run: bool = False,
    pause: float = 0.05,
) -> CleanupReport:
    """One run under the advisory lock; returns `skipped=True` at once when another replica holds it."""
    started = time.monotonic()
    report = CleanupReport(dry_run=dry_run)
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_ID):
            logger.info("audit cleanup skipped: another replica is running it")
            report.skipped = True
            return report
        try:
            retention = {"access_log": 0.0, "sessions": session_record_retention, "link_tokens": LINK_TOKEN_RETENTION}
            for table, extra in retention.items():
                if dry_run:
                    setattr(report, table, await _count(conn, table, extra))
                    continue
                batch = _Batches(conn, table, extra, batch_size, pause, started + max_runtime)
                setattr(report, table, await batch.run(report))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
    report.duration = time.monotonic() - started
    _log(report)
    return report


async def _count(conn: Any, table: str, extra: float) -> int:
    found: int = await conn.fetchval(f"SELECT count(*) {TARGETS[table][1]}", extra)
    return found


@dataclass
class _Batches:
    """Deletes one table's rows past retention, `size` rows per transaction, until none or the deadline."""

    conn: Any
    table: str
    extra: float
    size: int
    pause: float
    deadline: float

    async def run(self, report: CleanupReport) -> int:
        key, where = TARGETS[self.table]
        statement = (
            f"DELETE FROM {self.table} WHERE {key} IN "  # noqa: S608 - fixed text, no input
            f"(SELECT {key} {where} LIMIT $2 FOR UPDATE SKIP LOCKED)"
        )
        deleted = 0
        while True:
            if time.monotonic() >= self.deadline:
                report.complete = False
                return deleted
            async with self.conn.transaction():
                status: str = await self.conn.execute(statement, self.extra, self.size)
            count = int(status.rsplit(" ", 1)[-1])
            deleted += count
            report.batches += 1
            if count < self.size:
                return deleted
            await asyncio.sleep(self.pause)


def _log(report: CleanupReport) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    logger.info(
        "audit cleanup {}: {} access-log rows, {} session records, {} link tokens in {:.1f} s{}",
        verb,
        report.access_log,
        report.sessions,
        report.link_tokens,
        report.duration,
        "" if report.complete else " (time budget reached; the next run continues)",
    )


async def cleanup_forever(
    pool: asyncpg.Pool,
    interval: float,
    *,
    on_report: Callable[[CleanupReport], None] | None = None,
    **options: Any,
) -> None:
    """Run at once, then every `interval` seconds, until cancelled. A failed run is logged, not fatal."""
    while True:
        try:
            report = await run_cleanup(pool, **options)
        except Exception as exc:  # noqa: BLE001 - the job must outlive a database outage
            logger.error("audit cleanup failed: {}", type(exc).__name__)
        else:
            if on_report is not None:
                on_report(report)
        await asyncio.sleep(interval)

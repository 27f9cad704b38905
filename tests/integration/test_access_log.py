"""The access-log writer on real PostgreSQL (SPEC §9.3): latency, backpressure, drain, failing batches."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from loguru import logger

from pandora_users.audit import vocabulary
from pandora_users.audit.access_log import AccessLogEntry, AccessLogWriter


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield created
    await created.close()


def entry(n: int = 0, **overrides: Any) -> AccessLogEntry:
    fields: dict[str, Any] = {
        "method": "POST",
        "route": "/api/v1/auth/login",
        "actor_identifier": "alice@example.com",
        "duration_ms": 12,
        "ip_address": "203.0.113.9",
        "user_agent": "pytest",
        "request_id": f"req-{n}",
        "failure_reason": "invalid_credentials",
        "metadata": {"rate_limit": "login-ip"},
    }
    fields.update(overrides)
    return AccessLogEntry.of("authn_login_fail", status_code=401, listener="public", actor_type="anonymous", **fields)


async def rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    found: list[asyncpg.Record] = await pool.fetch("SELECT * FROM access_log ORDER BY request_id")
    return found


async def test_an_entry_is_written_within_a_second_with_every_column(pool: asyncpg.Pool) -> None:
    writer = AccessLogWriter(pool, retention_days=30)  # the default 1 s flush interval
    writer.start()
    user_id, session_id = uuid.uuid4(), uuid.uuid4()
    started = time.monotonic()
    await writer.record(entry(1, user_id=user_id, session_id=session_id, actor_id=str(user_id), trace_id="ab" * 16))
    while not await rows(pool):
        assert time.monotonic() - started < 1.5, "not flushed within the flush interval"
        await asyncio.sleep(0.05)
    [row] = await rows(pool)
    assert row["event_type"] == "authn_login_fail" and row["category"] == "authentication"
    assert row["severity"] == "warning" and row["status"] == "failure" and row["status_code"] == 401
    assert row["listener"] == "public" and row["method"] == "POST" and row["route"] == "/api/v1/auth/login"
    assert row["user_id"] == user_id and row["session_id"] == session_id and row["actor_id"] == str(user_id)
    assert str(row["ip_address"]) == "203.0.113.9" and row["is_sensitive"] is True
    assert json.loads(row["metadata"]) == {"rate_limit": "login-ip"}
    assert row["retention_until"] - row["created_at"] == timedelta(days=30)
    assert writer.written == 1 and writer.failures == 0
    await writer.close()


async def test_a_full_queue_makes_callers_wait_and_drops_nothing(pool: asyncpg.Pool) -> None:
    writer = AccessLogWriter(pool, retention_days=1, queue_size=2, flush_interval=0.05, batch_size=3)
    await writer.record(entry(0))
    await writer.record(entry(1))
    blocked = asyncio.create_task(writer.record(entry(2)))
    await asyncio.sleep(0.1)
    assert not blocked.done()  # the writer is not started: the queue is full, the caller waits
    writer.start()
    await asyncio.wait_for(blocked, 2)
    await asyncio.gather(*(writer.record(entry(n)) for n in range(3, 203)))
    await writer.close()
    assert len(await rows(pool)) == 203 and writer.written == 203


async def test_close_drains_the_queue(pool: asyncpg.Pool) -> None:
    writer = AccessLogWriter(pool, retention_days=1, flush_interval=30, batch_size=1000)
    writer.start()
    for n in range(50):
        await writer.record(entry(n))
    started = time.monotonic()
    await writer.close()
    assert time.monotonic() - started < 5  # does not wait for the 30 s flush interval
    assert len(await rows(pool)) == 50
    with pytest.raises(RuntimeError):
        await writer.record(entry(99))


async def test_bad_values_do_not_sink_a_batch(pool: asyncpg.Pool) -> None:
    writer = AccessLogWriter(pool, retention_days=1, flush_interval=0.05)
    writer.start()
    await writer.record(entry(0, ip_address="not-an-ip", user_agent="ua\x00" + "x" * 600, metadata={"k\x00": "v\x00"}))
    await writer.record(entry(1, actor_identifier="e" * 300, metadata={"bad": object()}))
    await writer.close()
    first, second = await rows(pool)
    assert first["ip_address"] is None and first["user_agent"] == "ua" + "x" * 510
    assert json.loads(first["metadata"]) == {"k": "v"}
    assert len(second["actor_identifier"]) == 254 and json.loads(second["metadata"]) == {
        "metadata_error": "not encodable"
    }
    assert writer.failures == 0


async def test_a_failing_batch_is_retried_then_logged_at_error(pool: asyncpg.Pool) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    failed: list[tuple[int, str]] = []
    writer = AccessLogWriter(
        pool, retention_days=1, flush_interval=0.2, backoff=0.1, on_failure=lambda b, e: failed.append((len(b), e))
    )
    writer.start()
    try:
        await pool.execute("ALTER TABLE access_log RENAME TO access_log_away")
        started = time.monotonic()
        await writer.record(entry(0))
        await writer.record(entry(1))
        while writer.failures < 2:
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        await pool.execute("ALTER TABLE access_log_away RENAME TO access_log")
        await writer.record(entry(2))  # the task survived: later entries are written
        await writer.close()
    finally:
        logger.remove(sink)
    assert writer.failures == 2 and [r["request_id"] for r in await rows(pool)] == ["req-2"]
    assert failed == [(2, "UndefinedTableError")]  # one batch, reported once
    assert [n for n in (1, 2, 3, 4) if any(f"(attempt {n}/3)" in line for line in lines)] == [1, 2, 3]
    assert elapsed >= 0.3  # backoff 0.1 s, then 0.2 s, between the three attempts
    lost = [line for line in lines if "ERROR" in line and "access log entry not written" in line]
    assert len(lost) == 2 and any('"request_id":"req-0"' in line for line in lost)


async def test_a_closed_pool_fails_batches_without_crashing(database_url: str) -> None:
    closed = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    await closed.close()
    writer = AccessLogWriter(closed, retention_days=1, flush_interval=0.01, backoff=0.01)
    writer.start()
    for n in range(3):
        await writer.record(entry(n))
    await writer.close()
    assert writer.failures == 3 and writer.written == 0


async def test_the_table_has_exactly_the_columns_of_the_spec(pool: asyncpg.Pool) -> None:
    found = await pool.fetch(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = 'access_log'"
    )
    columns = {r["column_name"]: (r["data_type"], r["is_nullable"] == "YES") for r in found}
    text, ts, uid = "text", "timestamp with time zone", "uuid"
    assert columns == {
        "id": (uid, False), "created_at": (ts, False), "event_type": (text, False), "category": (text, False),
        "severity": (text, False), "status": (text, False), "status_code": ("integer", False),
        "listener": (text, False), "method": (text, False), "route": (text, False), "user_id": (uid, True),
        "actor_type": (text, False), "actor_id": (text, True), "actor_identifier": (text, False),
        "resource_type": (text, True), "resource_id": (text, True), "session_id": (uid, True),
        "ip_address": ("inet", True), "user_agent": (text, True), "request_id": (text, True),
        "trace_id": (text, True), "failure_reason": (text, True), "duration_ms": ("integer", False),
        "metadata": ("jsonb", False), "retention_until": (ts, False), "is_sensitive": ("boolean", False),
    }  # fmt: skip
    indexed = {r[0] for r in await pool.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = 'access_log'")}
    for column in ("created_at DESC", "user_id", "actor_id", "event_type", "request_id", "retention_until"):
        assert any(f"({column}" in definition for definition in indexed), column


def test_entries_take_category_severity_and_sensitivity_from_the_vocabulary() -> None:
    common: dict[str, Any] = {"method": "GET", "route": "/r", "actor_identifier": "x", "duration_ms": 1}
    forbidden = AccessLogEntry.of("authz_fail", status_code=403, listener="public", actor_type="user", **common)
    assert (forbidden.category, forbidden.severity, forbidden.is_sensitive) == ("authorization", "high", False)
    unauth = AccessLogEntry.of("authz_fail", status_code=401, listener="public", actor_type="anonymous", **common)
    assert unauth.severity == "warning"
    admin_read = AccessLogEntry.of("authz_admin", status_code=200, listener="admin", actor_type="admin", **common)
    assert (admin_read.category, admin_read.status, admin_read.is_sensitive) == ("data_access", "success", True)
    change = AccessLogEntry.of("authn_password_change", status_code=400, listener="public", actor_type="user", **common)
    assert change.severity == "warning" and change.status == "failure"
    grpc_error = AccessLogEntry.of("sys_error", status_code=13, listener="grpc", actor_type="service", **common)
    assert grpc_error.status == "error"
    assert vocabulary.error_event_type(429, "public") == "excess_rate_limit_exceeded"
    assert vocabulary.error_event_type(404, "admin") == "input_validation_fail"
    assert vocabulary.error_event_type(503, "public") == "sys_error"
    assert vocabulary.error_event_type(16, "grpc") == "authz_fail"
    assert vocabulary.error_event_type(200, "public") is None
    assert set(vocabulary.EVENT_TYPES) >= {"authn_login_fail_max", "authn_token_reuse", "user_erased"}
    assert all(t.category in vocabulary.CATEGORIES for t in vocabulary.EVENT_TYPES.values())

"""The access-log writer (SPEC §9.3): a bounded queue drained by one task that COPYs batches to PostgreSQL.

`record` applies backpressure when the queue is full (the caller waits; nothing is dropped). A batch closes
when it holds `batch_size` entries or `flush_interval` after its first entry. A failing batch is retried
with backoff; after the last attempt each entry goes to the application log at ERROR and is counted in
`failures`. `close` drains the queue before returning.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg
import msgspec
from loguru import logger

from pandora_users.audit import vocabulary

TABLE: Final = "access_log"
COLUMNS: Final = (
    "id", "created_at", "event_type", "category", "severity", "status", "status_code", "listener", "method",
    "route", "user_id", "actor_type", "actor_id", "actor_identifier", "resource_type", "resource_id",
    "session_id", "ip_address", "user_agent", "request_id", "trace_id", "failure_reason", "duration_ms",
    "metadata", "retention_until", "is_sensitive",
)  # fmt: skip
MAX_USER_AGENT, MAX_IDENTIFIER = 512, 254
ACQUIRE_TIMEOUT = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


class AccessLogEntry(msgspec.Struct, kw_only=True):
    """One row of `access_log`. `retention_until` is filled in by the writer when left unset."""

    event_type: str
    category: str
    severity: str
    status: str
    status_code: int
    listener: str
    method: str
    route: str
    actor_type: str
    actor_identifier: str
    duration_ms: int
    is_sensitive: bool
    user_id: UUID | None = None
    actor_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    session_id: UUID | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    failure_reason: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    retention_until: datetime | None = None
    id: UUID = msgspec.field(default_factory=uuid4)
    created_at: datetime = msgspec.field(default_factory=_now)

    @classmethod
    def of(
        cls,
        event_type: str,
        *,
        status_code: int,
        listener: str,
        actor_type: str,
        **fields: Any,
    ) -> AccessLogEntry:
        """An entry whose category, severity, status and `is_sensitive` follow from the vocabulary."""
        kind = vocabulary.event_type(event_type)
        return cls(
            event_type=event_type,
            category=kind.category,
            severity=vocabulary.severity(event_type, status_code, listener),
            status=vocabulary.status_of(status_code, listener),
            status_code=status_code,
            listener=listener,
            actor_type=actor_type,
            is_sensitive=vocabulary.is_sensitive(kind.category, listener, actor_type),
            **fields,
        )


Observer = Callable[[Sequence[AccessLogEntry]], None]
FailureObserver = Callable[[Sequence[AccessLogEntry], str], None]


# Entries written after their user's erasure was projected lose their personal data on the way in (the
# users projection scrubs the rows that were already there when it sees `user.erased`).
SCRUB_ERASED = """
UPDATE access_log a SET actor_identifier = '[erased]', ip_address = NULL, user_agent = NULL
FROM users u WHERE a.id = ANY($1::uuid[]) AND u.id = a.user_id AND u.erased_at IS NOT NULL
"""


class AccessLogWriter:
    """Batches entries into `access_log`. `start()` once inside the event loop; `close()` at shutdown."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        retention_days: int,
        queue_size: int = 10_000,
        flush_interval: float = 1.0,
        batch_size: int = 500,
        attempts: int = 3,
        backoff: float = 0.2,
        on_written: Observer | None = None,
        on_failure: FailureObserver | None = None,
    ) -> None:
        self._pool = pool
        self._retention = timedelta(days=retention_days)
        self._queue: asyncio.Queue[AccessLogEntry | None] = asyncio.Queue(queue_size)  # None: stop
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._attempts = attempts
        self._backoff = backoff
        self._on_written = on_written
        self._on_failure = on_failure
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._inflight = 0  # record() calls waiting for room
        self.written = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="access-log-writer")
        return self._task

    async def record(self, entry: AccessLogEntry) -> None:
        """Queue an entry; waits while the queue is full (backpressure, never a drop)."""
        if self._closing:
            raise RuntimeError("the access-log writer is closed")
        self._inflight += 1
        try:
            await self._queue.put(self._normalise(entry))
        finally:
            self._inflight -= 1

    async def close(self) -> None:
        """Write everything queued, then stop the task."""
        if self._closing:
            if self._task is not None:
                await asyncio.shield(self._task)
            return
        self._closing = True
        task = self.start()
        await self._queue.put(None)
        await task

    async def _run(self) -> None:
        stopping = False
        while not (stopping and self._queue.empty() and self._inflight == 0):
            batch, stop = await self._collect()
            stopping = stopping or stop
            if batch:
                try:
                    await self._write(batch)
                except Exception as exc:  # noqa: BLE001 - whatever happens, the writer must keep draining
                    self._give_up(batch, type(exc).__name__)

    async def _collect(self) -> tuple[list[AccessLogEntry], bool]:
        """One batch: up to `batch_size` entries, or what arrived within `flush_interval` of the first."""
        first = await self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._flush_interval
        while len(batch) < self._batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if self._closing or remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _write(self, batch: list[AccessLogEntry]) -> None:
        rows = [_row(entry) for entry in batch]
        delay, error = self._backoff, "unknown"
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
                    await conn.copy_records_to_table(TABLE, records=rows, columns=COLUMNS)
                    await conn.execute(SCRUB_ERASED, [entry.id for entry in batch])
            except Exception as exc:  # noqa: BLE001 - any failure is retried, then reported; the task lives on
                error = type(exc).__name__
                logger.warning(
                    "access log batch of {} failed (attempt {}/{}): {}", len(rows), attempt, self._attempts, error
                )
                if attempt < self._attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
                continue
            self.written += len(batch)
            if self._on_written is not None:
                self._on_written(batch)
            return
        self._give_up(batch, error)

    def _give_up(self, batch: list[AccessLogEntry], error: str) -> None:
        for entry in batch:
            logger.error("access log entry not written ({}): {}", error, msgspec.json.encode(entry).decode())
        self.failures += len(batch)
        if self._on_failure is not None:
            self._on_failure(batch, error)

    def _normalise(self, entry: AccessLogEntry) -> AccessLogEntry:
        """Values PostgreSQL would refuse (a NUL, a bad IP, a naive time) must not sink a whole batch."""
        created = entry.created_at if entry.created_at.tzinfo else entry.created_at.replace(tzinfo=UTC)
        return msgspec.structs.replace(
            entry,
            created_at=created,
            retention_until=entry.retention_until or created + self._retention,
            actor_identifier=_text(entry.actor_identifier, MAX_IDENTIFIER) or "",
            user_agent=_text(entry.user_agent, MAX_USER_AGENT),
            ip_address=_ip(entry.ip_address),
            metadata=_metadata(entry.metadata),
        )


def _row(e: AccessLogEntry) -> tuple[Any, ...]:
    return (
        e.id, e.created_at, e.event_type, e.category, e.severity, e.status, e.status_code, e.listener,
        _text(e.method), _text(e.route), e.user_id, e.actor_type, _text(e.actor_id), e.actor_identifier,
        _text(e.resource_type), _text(e.resource_id), e.session_id, e.ip_address, e.user_agent,
        _text(e.request_id), _text(e.trace_id), _text(e.failure_reason), e.duration_ms,
        msgspec.json.encode(e.metadata).decode(), e.retention_until, e.is_sensitive,
    )  # fmt: skip


def _text(value: str | None, limit: int | None = None) -> str | None:
    if value is None:
        return None
    cleaned = value.replace("\x00", "")
    return cleaned[:limit] if limit is not None else cleaned


def _ip(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe metadata without NULs (jsonb refuses \\u0000); unencodable metadata is replaced, not fatal."""
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        logger.warning("access log metadata not encodable; replaced")
        return {"metadata_error": "not encodable"}
    if "\\u0000" not in text:
        return value
    cleaned: dict[str, Any] = _without_nul(msgspec.json.decode(text))
    return cleaned


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value

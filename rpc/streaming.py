"""StreamEvents (SPEC §5.2, §8.4): published events from the event store itself, in position order.

Each stream reads batches of stored events after its position, decodes them in a worker thread and sends
them as `to_entry` makes them for the Redis Stream, so both carry the same fields. At the head it either ends
or (`follow`) waits for news: one LISTEN connection per server is woken by the store's NOTIFY on every
append, and a pull every `poll_interval` covers a lost notification or a LISTEN connection that is down.
Positions follow commit order (the store appends under a table lock), so a stream that has sent position p
never misses a later commit at a lower position, and a consumer that resumes from its last position + 1
misses nothing. At shutdown every stream ends with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from eventsourcing.persistence import StoredEvent
from loguru import logger

from pandora_users.domain.errors import ServiceUnavailable
from pandora_users.domain.events import BY_EVENT_TYPE, PUBLISHED_TOPICS
from pandora_users.store.app import EVENTS_TABLE, EventStore
from projections.integration_events import Entry, to_entry

BATCH = 500
SELECT = (
    f"SELECT notification_id, originator_id, originator_version, topic, state FROM {EVENTS_TABLE}"  # noqa: S608
    " WHERE notification_id >= $1 AND topic = ANY($2::text[]) ORDER BY notification_id LIMIT $3"
)
Connect = Callable[[], Awaitable[asyncpg.Connection]]


class _Subject(msgspec.Struct):
    """Only the subject user of a stored event: a cheap filter before decrypting the rest."""

    user_id: UUID


_subject = msgspec.json.Decoder(_Subject)


@dataclass(frozen=True)
class Selection:
    """What a stream wants: from a position (inclusive), some event types (topics) and optionally one user."""

    from_position: int
    topics: tuple[str, ...] = PUBLISHED_TOPICS
    user_id: UUID | None = None

    @classmethod
    def of(cls, from_position: int, types: Sequence[str] | None, user_id: UUID | None) -> Selection:
        topics = tuple(BY_EVENT_TYPE[t].TOPIC for t in types) if types else PUBLISHED_TOPICS
        return cls(max(from_position, 1), topics, user_id)


def decode_batch(store: EventStore, rows: Sequence[Any], user_id: UUID | None, now: datetime) -> list[Entry]:
    """The stream entries of stored rows (runs in a worker thread: decryption is CPU and key lookups)."""
    entries: list[Entry] = []
    store.forget_keys_erased_in((row["topic"], UUID(bytes=row["originator_id"].bytes)) for row in rows)
    for row in rows:
        state = bytes(row["state"])
        if user_id is not None and _subject.decode(state).user_id != user_id:
            continue
        stored = StoredEvent(
            originator_id=UUID(bytes=row["originator_id"].bytes),
            originator_version=row["originator_version"],
            topic=row["topic"],
            state=state,
        )
        entry = to_entry(row["notification_id"], store.decode(stored), now)
        if entry is not None:
            entries.append(entry)
    return entries


class EventFeed:
    """Reads the store for every stream and tells following streams when something was appended."""

    def __init__(self, pool: asyncpg.Pool, store: EventStore, connect: Connect, *, poll_interval: float = 1.0) -> None:
        self.pool = pool
        self.store = store
        self.connect = connect
        self.poll_interval = poll_interval
        self.closed = asyncio.Event()
        self._news = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="rpc-event-feed")

    def close(self) -> None:
        """Streams end with UNAVAILABLE from now on; the LISTEN connection closes."""
        self.closed.set()
        self._news.set()
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _wake(self, *_: object) -> None:
        news, self._news = self._news, asyncio.Event()
        news.set()

    async def _listen(self) -> None:
        delay = 0.5
        while not self.closed.is_set():
            try:
                conn = await self.connect()
            except (OSError, asyncpg.PostgresError) as exc:
                logger.warning("event feed: cannot LISTEN ({}); streams poll instead", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            try:
                await conn.add_listener(EVENTS_TABLE, self._wake)
                delay = 0.5
                self._wake()  # anything appended while we were not listening
                while True:
                    await asyncio.sleep(5.0)
                    await conn.fetchval("SELECT 1")  # a dead connection surfaces here
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("event feed: LISTEN connection lost ({}); reconnecting", type(exc).__name__)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=1))

    async def batch(self, selection: Selection, position: int) -> tuple[list[Entry], int | None]:
        """Entries from `position` on (at most BATCH rows scanned) and the last position scanned."""
        rows = await self.pool.fetch(SELECT, position, list(selection.topics), BATCH)
        if not rows:
            return [], None
        now = datetime.now(UTC)
        entries = await asyncio.to_thread(decode_batch, self.store, rows, selection.user_id, now)
        return entries, int(rows[-1]["notification_id"])

    async def wait(self, news: asyncio.Event) -> None:
        """Until something is appended (`news` was taken before the last read), a poll interval, or shutdown."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(news.wait(), self.poll_interval)
        self.check_open()

    def check_open(self) -> None:
        if self.closed.is_set():
            raise ServiceUnavailable("the server is shutting down")

    async def events(self, selection: Selection, *, follow: bool) -> AsyncGenerator[Entry, None]:
        """Every selected event from the selection's position, in order; with `follow`, forever."""
        position = selection.from_position
        while True:
            self.check_open()
            news = self._news
            entries, last = await self.batch(selection, position)
            for entry in entries:
                yield entry
            if last is not None:
                position = last + 1
                continue
            if not follow:
                return
            await self.wait(news)

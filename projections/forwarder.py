"""The forwarder: publishes integration events to the Redis Stream (SPEC §8), entry id = position.

- A batch is one pipeline of `XADD <stream> MAXLEN ~ <maxlen> <position>-0 …`, wrapped in MULTI/EXEC when
  it holds several entries: a refusal at queue time (OOM) then aborts the whole batch, so no later entry can
  overtake a refused one. Per entry, "equal or smaller than the top item" means already delivered.
- Resume: the stream's last generated id is a checkpoint; positions at or below it are not sent again.
- Redis errors never park events. `apply` retries with backoff (0.1 s doubling, at most 5 s); after
  `patience` seconds (30), or once `stop()` is called, it raises `RedisUnavailable`, a `LostLease`, so the runner
  rolls the batch back and stands down without parking, then comes back and tries again.
- Erasure: once `user.erased` is in the stream, that user's older entries still in it are XDEL'd.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import redis
from loguru import logger
from redis.backoff import NoBackoff
from redis.retry import Retry

from pandora_users.observability import metrics as m
from projections.integration_events import ERASED_TYPE, Entry, to_entry
from projections.runner import Envelope, LostLease
from projections.spans import publish_spans

if TYPE_CHECKING:
    from projections.registry import ProjectionDeps

T = TypeVar("T")
DUPLICATE = "equal or smaller than the target stream top item"
PAGE = 500
KEEPALIVE_EVERY = 1.0


class RedisUnavailable(LostLease):
    """Redis kept failing (or we are stopping): roll the batch back and let the runner retry it later.

    It is a `LostLease` because that is the runner's one exception that neither parks nor isolates.
    """


def connect(url: str) -> redis.Redis:
    """A synchronous client for a projector thread: short timeouts, one immediate reconnect, no hidden backoff."""
    client: redis.Redis = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    return client


class RedisRetry:
    """Runs a Redis operation until it succeeds, patience runs out, or `stopping` is set.

    The wait happens inside the runner's batch transaction, and eventsourcing's connections end a session
    idle in a transaction after 5 s; `keepalive` (a `SELECT 1` on that connection) runs every second.
    """

    def __init__(
        self,
        what: str,
        stopping: threading.Event,
        *,
        first: float = 0.1,
        cap: float = 5.0,
        patience: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.stopping = stopping
        self.first, self.cap, self.patience = first, cap, patience
        self.clock = clock
        self.failures = 0  # consecutive, across batches: the delay keeps growing while Redis stays down
        self.errors = 0

    def delay(self) -> float:
        return float(min(self.cap, self.first * 2 ** min(self.failures - 1, 16)))

    def call(self, operation: Callable[[], T], keepalive: Callable[[], object] | None = None) -> T:
        started = self.clock()
        while True:
            try:
                result = operation()
            except redis.RedisError as exc:
                self.failures += 1
                self.errors += 1
                m.stream_publish.labels("error").inc()
                delay = self.delay()
                if self.failures == 1 or self.failures % 10 == 0:
                    logger.warning("{}: Redis error ({}: {}); retrying", self.what, type(exc).__name__, exc)
                if self.clock() - started + delay > self.patience:
                    raise RedisUnavailable(f"{self.what}: Redis unavailable ({type(exc).__name__})") from exc
                if self._pause(delay, keepalive):
                    raise RedisUnavailable(f"{self.what}: stopping while Redis is unavailable") from exc
                continue
            if self.failures:
                logger.info("{}: Redis is back after {} failed attempts", self.what, self.failures)
            self.failures = 0
            return result

    def _pause(self, delay: float, keepalive: Callable[[], object] | None) -> bool:
        """Wait `delay` seconds, keeping the transaction alive; True when told to stop."""
        end = self.clock() + delay
        while (left := end - self.clock()) > 0:
            if keepalive is not None:
                keepalive()
            if self.stopping.wait(min(left, KEEPALIVE_EVERY)):
                return True
        return False


@dataclass
class PublishStats:
    """Counters for the metrics of SPEC §12.2 (`redis_stream_publish_total`, forwarder lag)."""

    ok: int = 0
    duplicate: int = 0
    deleted: int = 0
    last_position: int = 0
    last_timestamp: datetime | None = None


class ForwarderProjection:
    """Publishes every published event type, in position order, exactly once per position."""

    name = "forwarder"

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        maxlen: int,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        patience: float = 30.0,
    ) -> None:
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self.clock = clock
        self.stopping = threading.Event()
        self.retry = RedisRetry("forwarder", self.stopping, patience=patience)
        self.stats = PublishStats()
        self._checkpoint: int | None = None  # the stream's last generated id; re-read after any error

    @classmethod
    def from_deps(cls, deps: ProjectionDeps) -> ForwarderProjection:
        if not deps.redis_url:
            raise ValueError("the forwarder needs Redis (REDIS_URL)")
        return cls(connect(deps.redis_url), deps.events_stream, deps.events_stream_maxlen)

    def stop(self) -> None:
        """Abandon a Redis retry loop at once (the batch is rolled back, nothing is parked)."""
        self.stopping.set()

    def apply(self, conn: psycopg.Connection[Any], batch: Sequence[Envelope]) -> None:
        now = self.clock()
        entries = [(env.position, entry) for env in batch if (entry := to_entry(env.position, env.event, now))]
        keepalive = _keepalive(conn)
        if entries:
            with publish_spans(self.stream, batch, entries) as traced:
                self.retry.call(lambda: self._publish(traced), keepalive)
        erased = {e.user_id: p for p, e in entries if e.event_type == ERASED_TYPE}
        if erased:
            self.stats.deleted += self.retry.call(lambda: self._delete_older(erased), keepalive)
        last = batch[-1]
        self.stats.last_position, self.stats.last_timestamp = last.position, last.event.timestamp

    def _publish(self, entries: Sequence[tuple[int, Entry]]) -> None:
        try:
            if self._checkpoint is None:
                self._checkpoint = self._last_id()
            checkpoint = self._checkpoint
            fresh = [(p, e) for p, e in entries if p > checkpoint]
            ok = self._xadd(fresh) if fresh else 0
        except redis.RedisError:
            self._checkpoint = None
            raise
        self._checkpoint = max(checkpoint, entries[-1][0])
        self.stats.ok += ok
        self.stats.duplicate += len(entries) - ok
        m.stream_publish.labels("ok").inc(ok)
        m.stream_publish.labels("duplicate").inc(len(entries) - ok)

    def _xadd(self, fresh: Sequence[tuple[int, Entry]]) -> int:
        """XADD each entry; the number actually added (the rest were already there)."""
        pipe = self.client.pipeline(transaction=len(fresh) > 1)
        for position, entry in fresh:
            fields: Any = entry.fields()  # redis-py's stub wants a dict of its own key types
            pipe.xadd(self.stream, fields, id=f"{position}-0", maxlen=self.maxlen, approximate=True)
        added = 0
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, redis.ResponseError) and DUPLICATE in str(result):
                continue
            if isinstance(result, Exception):
                raise result
            added += 1
        return added

    def _last_id(self) -> int:
        try:
            info = self.client.xinfo_stream(self.stream)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return 0
            raise
        return int(str(info["last-generated-id"]).split("-", 1)[0])

    def _delete_older(self, erased: dict[str, int]) -> int:
        """XDEL the entries of erased users older than their `user.erased` (scan bounded by 2 × maxlen)."""
        upper, scanned, deleted = f"({max(erased.values())}-0", 0, 0
        while scanned < 2 * self.maxlen:
            page: list[tuple[str, dict[str, str]]]
            page = self.client.xrevrange(self.stream, max=upper, min="-", count=PAGE)  # type: ignore[assignment]
            doomed = [
                entry_id
                for entry_id, fields in page
                if int(entry_id.split("-", 1)[0]) < erased.get(fields.get("user_id", ""), 0)
            ]
            if doomed:
                deleted += int(self.client.xdel(self.stream, *doomed))
            scanned += len(page)
            if len(page) < PAGE:
                break
            upper = f"({page[-1][0]}"
        return deleted


def _keepalive(conn: psycopg.Connection[Any]) -> Callable[[], object]:
    return lambda: conn.execute("SELECT 1")

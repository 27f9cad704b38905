"""The Prometheus metrics of SPEC §12.2. Labels take only bounded values (route templates, codes, names).

With several worker processes, set PROMETHEUS_MULTIPROC_DIR: counters and histograms then live in files the
exposition merges, so the workers' counts add up.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import os
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)


class _Pid:
    """This process's id, read once (and again in a forked child). File-backed values call their process
    identifier on every write, and getpid() is a system call: nine per HTTP request."""

    def __init__(self) -> None:
        self.value = os.getpid()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.value = os.getpid()

    def __call__(self) -> int:
        return self.value


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the same test prometheus-client made when it was imported
    values.ValueClass = values.MultiProcessValue(process_identifier=_Pid())  # type: ignore[no-untyped-call]

P = "pandora_user_service_"


class _Scheduled(threading.local):
    """This thread's records not yet written, and the event loop their write is scheduled on."""

    def __init__(self) -> None:
        self.dirty: list[SoonCounter | SoonHistogram] = []
        self.loop: asyncio.AbstractEventLoop | None = None


_scheduled = _Scheduled()


def _deferred(record: SoonCounter | SoonHistogram) -> bool:
    """Whether `record` is written at the end of this event-loop iteration (scheduled now if it is not yet);
    False outside an event loop: the caller writes at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    if record.loop is not loop:  # not yet scheduled on this loop (or only on one that has closed since)
        record.loop = loop
        scheduled = _scheduled
        scheduled.dirty.append(record)
        if scheduled.loop is not loop:
            scheduled.loop = loop
            loop.call_soon(_write, scheduled)
    return True


def _write(scheduled: _Scheduled) -> None:
    scheduled.loop = None
    dirty, scheduled.dirty = scheduled.dirty, []
    for record in dirty:
        record.write()


class SoonCounter:
    """A counter (or gauge) child whose increments are written at the end of each event-loop iteration.

    In multiprocess mode every `inc` or `observe` is a locked write into this process's mmap file, about 1 µs:
    hot paths (every HTTP request) record here instead, and each iteration writes once per series. A scrape
    cannot tell: the iteration ends before any later response goes out. Outside an event loop it writes at once.
    Use one from one thread (its event loop's).
    """

    __slots__ = ("amount", "child", "loop")

    def __init__(self, child: Any) -> None:
        self.child, self.amount = child, 0.0
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop this record's write is scheduled on

    def add(self, amount: float = 1) -> None:
        if _deferred(self):
            self.amount += amount
        else:
            self.child.inc(amount)

    def write(self) -> None:
        amount, self.amount, self.loop = self.amount, 0.0, None
        if amount:
            self.child.inc(amount)


class SoonHistogram:
    """A histogram child whose observations are written at the end of each event-loop iteration (as
    `SoonCounter`): per-bucket counts and their sum, then one write per bucket observed."""

    __slots__ = ("bounds", "child", "counts", "loop", "total")

    def __init__(self, child: Any) -> None:
        self.child, self.total = child, 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.bounds: list[float] = list(child._upper_bounds)  # the child's own bounds, +Inf last
        self.counts = [0] * len(self.bounds)

    def observe(self, amount: float) -> None:
        if not _deferred(self):
            self.child.observe(amount)
            return
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1  # the first bound >= amount, as `observe`
        self.total += amount

    def write(self) -> None:
        """What one `observe` per recorded amount writes: the sum, then each bucket's count (a bulk observe,
        which prometheus-client has no public API for)."""
        total, self.total, self.loop = self.total, 0.0, None
        self.child._sum.inc(total)
        for i, count in enumerate(self.counts):
            if count:
                self.child._buckets[i].inc(count)
                self.counts[i] = 0


@functools.cache
def soon_counter(metric: Any, *labels: str) -> SoonCounter:
    """The `SoonCounter` of `metric`'s child with these label values (of `metric` itself without any), made once:
    a hot path then skips both the per-write mmap and the `labels()` lookup. Label values are bounded sets."""
    return SoonCounter(metric.labels(*labels) if labels else metric)


@functools.cache
def soon_histogram(metric: Any, *labels: str) -> SoonHistogram:
    """The `SoonHistogram` of `metric`'s child with these label values, made once (as `soon_counter`)."""
    return SoonHistogram(metric.labels(*labels) if labels else metric)


FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZES = (100, 1_000, 10_000, 65_536, 1_048_576)

http_requests = Counter(f"{P}http_requests_total", "HTTP requests", ["listener", "method", "route", "status"])
http_duration = Histogram(
    f"{P}http_request_duration_seconds", "HTTP latency", ["listener", "method", "route"], buckets=FAST
)
http_request_size = Histogram(
    f"{P}http_request_size_bytes", "Request body size", ["listener", "method", "route"], buckets=SIZES
)
http_response_size = Histogram(
    f"{P}http_response_size_bytes", "Response body size", ["listener", "method", "route"], buckets=SIZES
)
http_active = Gauge(f"{P}http_active_connections", "Requests in flight", ["listener"], multiprocess_mode="livesum")
idempotency_hits = Counter(f"{P}http_idempotency_cache_hits_total", "Idempotent replays", ["route", "method"])
grpc_requests = Counter(f"{P}grpc_requests_total", "gRPC calls", ["method", "status"])
grpc_duration = Histogram(f"{P}grpc_request_duration_seconds", "gRPC latency", ["method"], buckets=FAST)
grpc_active = Gauge(f"{P}grpc_active_connections", "gRPC calls in flight", multiprocess_mode="livesum")
registrations = Counter(f"{P}user_registrations_total", "Registrations", ["status"])
logins = Counter(f"{P}user_logins_total", "Logins", ["audience", "status"])
logouts = Counter(f"{P}user_logouts_total", "Logouts", ["type"])
active_sessions = Gauge(f"{P}active_sessions", "Live sessions", multiprocess_mode="max")
active_users = Gauge(f"{P}active_users", "Users neither deleted nor erased", multiprocess_mode="max")
kyc_submissions = Counter(f"{P}kyc_submissions_total", "KYC status changes", ["status"])
token_refresh = Counter(f"{P}token_refresh_total", "Refreshes", ["audience", "status"])
token_validation = Counter(f"{P}token_validation_total", "Token checks", ["type", "status"])
token_validation_errors = Counter(f"{P}token_validation_errors_total", "Invalid tokens by reason", ["error_type"])
password_hash_duration = Histogram(f"{P}password_hash_duration_seconds", "Argon2 time", ["operation"], buckets=FAST)
db_transactions = Counter(f"{P}db_transactions_total", "Event-store transactions", ["status"])
cache_hits = Counter(f"{P}cache_hits_total", "Cache hits", ["cache_type", "operation"])
cache_misses = Counter(f"{P}cache_misses_total", "Cache misses", ["cache_type", "operation"])
errors = Counter(f"{P}errors_total", "Errors by code", ["error_type", "component"])
panics = Counter(f"{P}panics_total", "Unhandled exceptions", ["component"])
audit_created = Counter(f"{P}audit_logs_created_total", "Access-log entries", ["event_type", "severity"])
audit_failures = Counter(f"{P}audit_log_failures_total", "Access-log entries that could not be written", ["error_type"])
audit_deleted = Counter(f"{P}audit_logs_deleted_total", "Access-log rows deleted by retention")
append_duration = Histogram(f"{P}event_append_duration_seconds", "Event append", ["command"], buckets=FAST)
events_appended = Counter(f"{P}events_appended_total", "Events appended", ["event_type"])
append_conflicts = Counter(f"{P}event_append_conflicts_total", "Concurrency retries", ["command"])
head_position = Gauge(f"{P}event_store_head_position", "Highest position", multiprocess_mode="max")
projection_position = Gauge(f"{P}projection_position", "Projection position", ["projection"], multiprocess_mode="max")
projection_lag = Gauge(f"{P}projection_lag_seconds", "Projection lag", ["projection"], multiprocess_mode="max")
projection_processed = Counter(f"{P}projection_events_processed_total", "Events processed", ["projection"])
projection_failures = Counter(f"{P}projection_failures_total", "Projection failures", ["projection"])
forwarder_lag_seconds = Gauge(
    f"{P}forwarder_lag_seconds", "Age of the oldest unpublished event", multiprocess_mode="max"
)
forwarder_lag_events = Gauge(f"{P}forwarder_lag_events", "Head minus forwarder position", multiprocess_mode="max")
stream_publish = Counter(f"{P}redis_stream_publish_total", "Stream publishes", ["status"])
argon2_queue_depth = Gauge(f"{P}argon2_queue_depth", "Waiting for a hashing slot", multiprocess_mode="livesum")
argon2_in_flight = Gauge(f"{P}argon2_in_flight", "Hashing now", multiprocess_mode="livesum")
argon2_rejections = Counter(f"{P}argon2_rejections_total", "Hashing requests shed", ["reason"])
rate_limit_rejections = Counter(f"{P}rate_limit_rejections_total", "429s by limit", ["limit"])
account_lockouts = Counter(f"{P}account_lockouts_total", "Lockouts started")
token_reuse = Counter(f"{P}token_reuse_detected_total", "Refresh-token reuse detections")
revocation_checks = Counter(f"{P}revocation_checks_total", "Session-liveness checks", ["source", "result"])
user_row_reads = Counter(f"{P}user_row_reads_total", "Users read-model rows read by id, by source", ["source"])
consistency_wait = Histogram(f"{P}consistency_wait_seconds", "Read-your-writes waits", ["outcome"], buckets=FAST)
vault_errors = Counter(f"{P}vault_errors_total", "Vault failures", ["operation"])


def _registry() -> CollectorRegistry:
    """What to expose: this process's registry, or every worker's when PROMETHEUS_MULTIPROC_DIR is set."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    # The standard process and platform metrics, of the process serving /metrics.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def exposition() -> tuple[bytes, str]:
    """The text exposition (the admin listener's `/metrics`)."""
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def serve_metrics(host: str, port: int) -> Callable[[], None]:
    """`/metrics` on a port of its own (METRICS_PORT), for a process without the admin listener; its stop."""
    server, thread = start_http_server(port, addr=host, registry=_registry())

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def status_class(status: int) -> str:
    return f"{status // 100}xx"

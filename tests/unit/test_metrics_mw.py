"""Metrics recorded with `SoonCounter`/`SoonHistogram` (the HTTP middleware, the users rows) are written in bulk at
the end of each loop iteration: the totals must be exactly those of one `inc`/`observe` per record."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from api.metrics_mw import MetricsMiddleware
from pandora_users.observability import metrics as m
from pandora_users.observability.metrics import SoonCounter, SoonHistogram

SIZES = [0, 1, 99, 100, 101, 999, 5_000, 65_536, 70_000, 2_000_000]


def _samples(name: str, labels: dict[str, str]) -> dict[str, float]:
    """A histogram's `_bucket` (by `le`), `_sum` and `_count` samples for the given labels."""
    found: dict[str, float] = {}
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if (
                s.name.startswith(name)
                and not s.name.endswith("_created")
                and all(s.labels.get(k) == v for k, v in labels.items())
            ):
                found[s.name.removeprefix(name) + s.labels.get("le", "")] = s.value
    return found


def _reference(amounts: list[int]) -> dict[str, float]:
    """What one `observe` per amount gives on a histogram with the same buckets."""
    h = Histogram("reference", "r", buckets=m.SIZES, registry=CollectorRegistry())
    for amount in amounts:
        h.observe(amount)
    samples = h.collect()[0].samples
    return {
        s.name.removeprefix("reference") + s.labels.get("le", ""): s.value for s in samples if "created" not in s.name
    }


async def test_bulk_writes_equal_one_observation_per_request() -> None:
    listener = f"test-{uuid.uuid4().hex[:8]}"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        size = int(scope["path"].rsplit("/", 1)[1])
        body = b"x" * size
        await receive()
        await send({"type": "http.response.start", "status": 404 if size == 1 else 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"y" * 7}

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # answers spread over loop iterations, several per iteration

    mw = MetricsMiddleware(app, listener=listener)
    active = m.http_active.labels(listener)
    calls = [
        mw({"type": "http", "method": "GET", "path": f"/x/{size}", "path_template": "/x/{n}"}, receive, send)
        for size in SIZES * 3
    ]
    await asyncio.gather(*calls)
    await asyncio.sleep(0)  # the last iteration's records are written at its end

    labels = {"listener": listener, "method": "GET", "route": "/x/{n}"}
    sizes = SIZES * 3
    assert _samples(m.http_response_size._name, labels) == _reference(sizes)
    assert _samples(m.http_request_size._name, labels) == _reference([7] * len(sizes))
    durations = _samples(m.http_duration._name, labels)
    assert durations["_count"] == len(sizes) and durations["_bucket+Inf"] == len(sizes) and durations["_sum"] > 0
    counts = REGISTRY.get_sample_value
    assert counts(m.http_requests._name + "_total", {**labels, "status": "2xx"}) == len(sizes) - 3
    assert counts(m.http_requests._name + "_total", {**labels, "status": "4xx"}) == 3
    assert active._value.get() == 0


async def test_in_flight_requests_are_counted_until_they_end() -> None:
    listener = f"test-{uuid.uuid4().hex[:8]}"
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def ignore(message: dict[str, Any]) -> None:
        pass

    mw = MetricsMiddleware(app, listener=listener)
    active = m.http_active.labels(listener)
    scope = {"type": "http", "method": "GET", "path": "/", "path_template": "/"}
    tasks = [asyncio.create_task(mw(dict(scope), ignore, ignore)) for _ in range(5)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert active._value.get() == 5
    release.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(0)
    assert active._value.get() == 0


def test_outside_an_event_loop_records_are_written_at_once() -> None:
    child = m.http_requests.labels(f"test-{uuid.uuid4().hex[:8]}", "GET", "/", "2xx")
    histogram = m.http_duration.labels(f"test-{uuid.uuid4().hex[:8]}", "GET", "/")
    SoonCounter(child).add(2)
    SoonHistogram(histogram).observe(0.003)
    assert child._value.get() == 2
    assert histogram._sum.get() == 0.003


def test_a_record_left_pending_by_a_closed_loop_is_written_by_the_next_one() -> None:
    child = m.http_requests.labels(f"test-{uuid.uuid4().hex[:8]}", "GET", "/", "2xx")
    record = SoonCounter(child)

    async def add() -> None:
        record.add()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(add())  # its write is scheduled on this loop, which closes before running it
    loop.close()
    asyncio.run(add())
    assert child._value.get() == 2

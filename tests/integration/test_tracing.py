"""Spans on real PostgreSQL and Redis (SPEC §12.3): a command's span parents its append and its context is stored
in every event; the projectors continue that trace; the forwarder's publish span is what the stream carries."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from pandora_users.commands import registration
from pandora_users.commands.base import WriteSide
from pandora_users.commands.registration import Registration, SessionGrant
from pandora_users.domain.context import Context
from pandora_users.observability import tracing
from pandora_users.store.app import EventStore
from projections.forwarder import ForwarderProjection, connect
from projections.integration_events import METADATA_KEYS
from projections.runner import Envelope, Runner
from tests.spans import INCOMING, TRACE_ID, hex_ids, is_child, named, one, recording, traceparent_of

PASSWORD = "Zq8!vT3#pL9@wX-tracing"
SERVER_SPAN = "POST /api/v1/auth/register"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording() as exporter:
        yield exporter


def request_context() -> Context:
    return Context(metadata={"actor_role": "user", "request_id": "req-tracing", "traceparent": INCOMING})


async def register(w: WriteSide) -> SessionGrant:
    """A registration inside a server span that continues the caller's `traceparent`, as the HTTP edge does."""
    reg = Registration(f"trace-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, "Ann", "Lee", "203.0.113.9", "ua")
    incoming = tracing.extract({"traceparent": INCOMING})
    with tracing.span(SERVER_SPAN, kind=tracing.SERVER, parent=incoming):
        return await registration.register(w, reg, request_context())


def stored_metadata(store: EventStore) -> list[dict[str, str]]:
    return [store.decode(n).metadata for n in store.recorder.select_notifications(1, 100)]


async def test_command_span_parents_the_append_and_its_context_is_in_every_event(
    spans: InMemorySpanExporter, write_side: WriteSide, event_store: EventStore
) -> None:
    grant = await register(write_side)
    server, command = one(spans, SERVER_SPAN), one(spans, "command Register")
    append, hashing = one(spans, "eventstore.append"), one(spans, "password.hash")
    assert hex_ids(server)[0] == TRACE_ID and is_child(command, server) and is_child(append, command)
    # The password is hashed before the command's write transaction: a sibling of the command span.
    assert is_child(hashing, server) and (hashing.attributes or {})["pandora.argon2.memory_kib"] == 8192
    assert "pandora.queue_wait_ms" in (hashing.attributes or {})
    assert command.kind is SpanKind.INTERNAL and dict(command.attributes or {}) == {
        "pandora.command": "Register",
        "pandora.retries": 0,
        "pandora.aggregate_id": str(grant.user.id),
    }
    assert append.kind is SpanKind.CLIENT and dict(append.attributes or {}) == {
        "db.system": "postgresql",
        "pandora.events.count": 4,
        "pandora.position.first": grant.position - 3,  # type: ignore[operator]
        "pandora.position.last": grant.position,
    }
    metadata = stored_metadata(event_store)
    assert len(metadata) == 4
    for meta in metadata:
        assert meta["traceparent"] == traceparent_of(command) and meta["trace_id"] == TRACE_ID
        assert meta["request_id"] == "req-tracing" and meta["actor_id"] == str(grant.user.id)


async def test_without_tracing_events_keep_the_metadata_they_were_given(
    write_side: WriteSide, event_store: EventStore
) -> None:
    await register(write_side)
    for meta in stored_metadata(event_store):
        assert meta["traceparent"] == INCOMING and "trace_id" not in meta


class Probe:
    """A projection that keeps the envelopes it is given."""

    name = "probe"

    def __init__(self) -> None:
        self.seen: list[Envelope] = []

    def apply(self, conn: psycopg.Connection[Any], batch: Sequence[Envelope]) -> None:
        self.seen.extend(batch)


async def test_projection_spans_continue_each_events_trace(
    spans: InMemorySpanExporter, write_side: WriteSide, event_store: EventStore, database_url: str
) -> None:
    await register(write_side)
    command = one(spans, "command Register")
    probe = Probe()
    assert Runner(event_store, database_url, probe).step() == 4
    consumed = named(spans, "projection probe")
    assert len(consumed) == 4 and all(s.kind is SpanKind.CONSUMER and is_child(s, command) for s in consumed)
    by_position = {(s.attributes or {})["pandora.position"]: s for s in consumed}
    for envelope in probe.seen:
        span = by_position[envelope.position]
        assert (span.attributes or {})["pandora.event_type"] == (
            type(envelope.event).EVENT_TYPE or type(envelope.event).TOPIC
        )
        assert (span.attributes or {})["pandora.projection"] == "probe"
        assert envelope.trace is not None
        assert span.context is not None
        assert trace.get_current_span(envelope.trace).get_span_context().span_id == span.context.span_id


async def test_publish_span_is_the_context_the_stream_entry_carries(
    spans: InMemorySpanExporter, write_side: WriteSide, event_store: EventStore, database_url: str, redis_url: str
) -> None:
    await register(write_side)
    command = one(spans, "command Register")
    stream = f"tracing-{uuid.uuid4().hex[:8]}:events"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert Runner(event_store, database_url, ForwarderProjection(connect(redis_url), stream, 1000)).step() == 4
        entries: list[tuple[str, dict[str, str]]] = client.xrange(stream)  # type: ignore[assignment]
    finally:
        client.delete(stream)
    forwarded = {(s.attributes or {})["pandora.position"]: s for s in named(spans, "projection forwarder")}
    assert len(forwarded) == 4 and all(is_child(s, command) for s in forwarded.values())
    published = {str((s.attributes or {})["messaging.message.id"]): s for s in named(spans, f"{stream} publish")}
    assert sorted(published) == sorted(entry_id for entry_id, _ in entries) and len(entries) == 3
    for entry_id, fields in entries:
        publish = published[entry_id]
        assert publish.kind is SpanKind.PRODUCER and is_child(publish, forwarded[int(fields["position"])])
        assert dict(publish.attributes or {}) == {
            "messaging.system": "redis",
            "messaging.destination.name": stream,
            "messaging.operation.type": "send",
            "messaging.message.id": entry_id,
        }
        metadata = json.loads(fields["metadata"])
        assert metadata["traceparent"] == traceparent_of(publish) and metadata["trace_id"] == TRACE_ID
        assert list(metadata) == [key for key in METADATA_KEYS if key in metadata]

"""Recording spans in memory for tests: install an SDK provider with an in-memory exporter, and helpers to
find spans and check their parent links."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pandora_users.observability import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@contextmanager
def recording() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the block, every span sampled and kept in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = named(exporter, name)
    names = sorted({s.name for s in exporter.get_finished_spans()})
    assert len(found) == 1, f"{len(found)} spans named {name!r} among {names}"
    return found[0]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def traceparent_of(span: ReadableSpan) -> str:
    trace_id, span_id = hex_ids(span)
    return f"00-{trace_id}-{span_id}-01"


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.context is not None and parent.context is not None
    return (
        child.parent is not None
        and child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )


def parent_id(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


def all_in_trace(spans: Sequence[ReadableSpan], trace_id: str) -> bool:
    return all(s.context is not None and f"{s.context.trace_id:032x}" == trace_id for s in spans)

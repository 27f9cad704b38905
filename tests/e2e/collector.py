"""An OTLP/gRPC trace collector run by the tests themselves: a grpcio server implementing
`opentelemetry.proto.collector.trace.v1.TraceService` that keeps every span it is sent, in memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass(frozen=True)
class Collected:
    """One exported span, with ids in lower-case hex and its resource's attributes."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, PRODUCER, CONSUMER
    attributes: dict[str, Any]
    resource: dict[str, Any]
    error: bool

    def child_of(self, parent: Collected) -> bool:
        return self.trace_id == parent.trace_id and self.parent_id == parent.span_id


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    if field == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, field) if field else None


def _attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: Callable[[Collected], None]) -> None:
        self.sink = sink

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.sink(
                        Collected(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex() or None,
                            name=span.name,
                            kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            attributes=_attributes(span.attributes),
                            resource=resource,
                            error=span.status.code == span.status.STATUS_CODE_ERROR,
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


class Collector:
    """Listens on 127.0.0.1 (plaintext); `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT should say."""

    def __init__(self) -> None:
        self._spans: list[Collected] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        service = _TraceService(self._keep)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _keep(self, span: Collected) -> None:
        with self._lock:
            self._spans.append(span)

    @property
    def spans(self) -> list[Collected]:
        with self._lock:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[Collected]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def wait(self, trace_id: str, done: Callable[[list[Collected]], bool], timeout: float = 30) -> list[Collected]:
        """The spans of a trace once `done` says they are all there (fails after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.trace(trace_id)
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted(f"{s.kind} {s.name}" for s in spans)
                raise AssertionError(f"trace {trace_id} incomplete after {timeout} s: {names}")
            time.sleep(0.1)

    def span(self, trace_id: str, name: str) -> Collected:
        """The one span called `name` of a trace, once it has arrived (a trace's spans come in several batches:
        a child that ends first, a hash's, can be exported before its server span)."""
        return one(self.wait(trace_id, lambda spans: bool(named(spans, name))), name)


@contextmanager
def running_collector() -> Iterator[Collector]:
    collector = Collector()
    collector._server.start()
    try:
        yield collector
    finally:
        collector._server.stop(grace=None)


def named(spans: list[Collected], name: str) -> list[Collected]:
    return [s for s in spans if s.name == name]


def one(spans: list[Collected], name: str) -> Collected:
    found = named(spans, name)
    assert len(found) == 1, f"{len(found)} spans named {name!r} among {sorted(s.name for s in spans)}"
    return found[0]

"""Traces (SPEC §12.3): OpenTelemetry set-up from Settings, spans, and W3C trace-context helpers.

`setup` installs a tracer provider only when OTEL_ENABLED is on. Until then every helper here is a cheap no-op:
`span` yields the invalid span without touching the context, `current_trace` is empty, `extract` returns None.
The provider is this module's own (not OpenTelemetry's global one), so tests can install and remove theirs.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
from loguru import logger
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import INVALID_SPAN, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pandora_users import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

Context = otel_context.Context
S = TypeVar("S", bound=msgspec.Struct)
SERVER, CLIENT, INTERNAL = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL
PRODUCER, CONSUMER = SpanKind.PRODUCER, SpanKind.CONSUMER
PROPAGATED = ("traceparent", "tracestate", "baggage")
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


class TracingSettings(Protocol):
    """The attributes of `Settings` the set-up reads (structural: this module does not import settings)."""

    @property
    def app_env(self) -> str: ...
    @property
    def otel_enabled(self) -> bool: ...
    @property
    def otel_exporter_otlp_endpoint(self) -> str: ...
    @property
    def otel_service_name(self) -> str: ...
    @property
    def otel_sample_rate(self) -> float: ...


class _Installed:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("pandora_users", __version__)


class _Process:
    """The process's one tracing set-up (None until installed)."""

    installed: _Installed | None = None


_process = _Process()


def setup(settings: TracingSettings) -> bool:
    """Install the OTLP/gRPC pipeline of SPEC §12.3 when OTEL_ENABLED is on; True when installed."""
    if not settings.otel_enabled:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create(
        {
            "service.name": settings.otel_service_name,
            "service.version": __version__,
            "deployment.environment": settings.app_env,
        }
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.otel_sample_rate)))
    endpoint = settings.otel_exporter_otlp_endpoint
    # The exporter would treat a bare `host:port` as TLS; only an https:// endpoint asks for it here.
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.lower().startswith("https://"))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    logger.info("tracing: exporting spans over OTLP/gRPC to {} (sample rate {})", endpoint, settings.otel_sample_rate)
    return True


def install(provider: TracerProvider) -> None:
    """Use `provider` for every span of this process (the set-up, or a test's in-memory exporter)."""
    _process.installed = _Installed(provider)


def shutdown(timeout: float = 5.0) -> None:
    """Flush the spans still queued and stop exporting, waiting at most `timeout` seconds (SPEC §11)."""
    installed, _process.installed = _process.installed, None
    if installed is None:
        return
    # The provider's own shutdown may wait for an unreachable collector far longer than the shutdown timeout.
    worker = threading.Thread(target=installed.provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(max(timeout, 0.1))
    if worker.is_alive():
        logger.warning("tracing: spans not flushed within {} s; giving up", timeout)


def enabled() -> bool:
    return _process.installed is not None


def start(
    name: str,
    *,
    kind: SpanKind = INTERNAL,
    parent: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Span:
    """A started span that the caller ends (the invalid span, whose methods do nothing, when tracing is off)."""
    installed = _process.installed
    if installed is None:
        return INVALID_SPAN
    return installed.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)


def enter(span: Span, parent: Context | None = None) -> None:
    """Make `span` current for the rest of this task or thread's context (a request's own task)."""
    if span.get_span_context().is_valid:
        otel_context.attach(trace.set_span_in_context(span, parent))


def fail(span: Span, exc: BaseException) -> None:
    """Mark a span failed with the error's kind only: no message or stack trace (they may hold personal data)."""
    kind = getattr(exc, "code", None) or type(exc).__name__
    span.set_attribute("error.type", str(kind))
    span.set_status(Status(StatusCode.ERROR, str(kind)))


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = INTERNAL,
    parent: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
    current: bool = True,
) -> Iterator[Span]:
    """A span around a block, current inside it unless `current=False`; an exception marks it failed."""
    if _process.installed is None:
        yield INVALID_SPAN
        return
    started = start(name, kind=kind, parent=parent, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(started, parent)) if current else None
    try:
        yield started
    except BaseException as exc:
        fail(started, exc)
        raise
    finally:
        if token is not None:
            otel_context.detach(token)
        started.end()


def trace_context(traceparent: str | None) -> tuple[str, str] | None:
    """(traceparent, trace id) of a valid W3C `traceparent` (version 00), else None: a caller's value is kept
    (in event metadata, the access log) only in this shape."""
    match = _TRACEPARENT.match(traceparent.strip().lower()) if traceparent else None
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return match.group(0), match.group(1)


def extract(carrier: Mapping[str, str]) -> Context | None:
    """The context propagated by `traceparent`/`tracestate`/`baggage` in a carrier (None when tracing is off)."""
    if _process.installed is None:
        return None
    return _PROPAGATOR.extract(carrier)


def extract_headers(headers: Iterable[tuple[bytes, bytes]]) -> Context | None:
    """`extract` over ASGI request headers (lower-case names)."""
    if _process.installed is None:
        return None
    wanted = {name.encode() for name in PROPAGATED}
    return extract({key.decode("latin-1"): value.decode("latin-1") for key, value in headers if key in wanted})


def traceparent(context: SpanContext) -> str | None:
    """The W3C `traceparent` of a span context, or None when it is invalid."""
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def current_trace() -> dict[str, str]:
    """`traceparent` and `trace_id` of the current span (event metadata, SPEC §9.2); empty without one."""
    if _process.installed is None:
        return {}
    context = trace.get_current_span().get_span_context()
    parent = traceparent(context)
    return {"traceparent": parent, "trace_id": f"{context.trace_id:032x}"} if parent else {}


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, in hex, or None."""
    if _process.installed is None:
        return None
    context = trace.get_current_span().get_span_context()
    return (f"{context.trace_id:032x}", f"{context.span_id:016x}") if context.is_valid else None


def current_trace_id() -> str | None:
    ids = current_ids()
    return ids[0] if ids else None


def stamp(events: Sequence[S]) -> Sequence[S]:
    """Events whose metadata carries the current span's context (the command span), as SPEC §12.3 asks."""
    extra = current_trace()
    if not extra:
        return events
    return [msgspec.structs.replace(e, metadata={**e.metadata, **extra}) for e in events]  # type: ignore[attr-defined]

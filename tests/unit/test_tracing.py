"""Tracing pieces without a database (SPEC §12.3): set-up, disabled mode, the HTTP server span and error bodies,
the gRPC server span, and trace ids on log lines."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from litestar import Litestar, Request, get
from loguru import logger
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN, SpanKind

from api.app import wrap
from api.edge import EdgeConfig
from api.errors import EXCEPTION_HANDLERS, error_body
from api.tracing_mw import TracingMiddleware, traced
from pandora_users.config.settings import Secret, ServiceToken
from pandora_users.domain.errors import UserNotFound
from pandora_users.logs import configure
from pandora_users.observability import tracing
from rpc.auth import ServiceAuth
from rpc.deps import RpcDeps
from rpc.gen import user_pb2 as pb
from rpc.gen.user_grpc import UserServiceStub
from rpc.hooks import CallObserver
from rpc.service import UserService
from tests.e2e.procs import free_port
from tests.spans import INCOMING, TRACE_ID, hex_ids, one, parent_id, recording

USER = uuid.UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")


@dataclasses.dataclass(frozen=True)
class OtelSettings:
    otel_enabled: bool = True
    otel_exporter_otlp_endpoint: str = "localhost:4317"
    otel_service_name: str = "pandora-users-test"
    otel_sample_rate: float = 0.25
    app_env: str = "staging"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording() as exporter:
        yield exporter


def test_disabled_installs_nothing_and_every_helper_is_a_no_op() -> None:
    assert tracing.setup(OtelSettings(otel_enabled=False)) is False
    assert not tracing.enabled()
    with tracing.span("anything") as span:
        assert span is INVALID_SPAN
        assert tracing.current_trace() == {} and tracing.current_ids() is None
    assert tracing.extract({"traceparent": INCOMING}) is None
    assert tracing.start("x") is INVALID_SPAN
    events = [object()]
    assert tracing.stamp(events) is events  # type: ignore[type-var]
    app = object()
    assert traced(app, listener="public") is app
    assert "trace_id" not in error_body("not_found")


@pytest.mark.parametrize(("endpoint", "insecure"), [("localhost:4317", True), ("https://otel.example:4317", False)])
def test_setup_installs_the_pipeline_of_the_spec(endpoint: str, insecure: bool) -> None:
    assert tracing.setup(OtelSettings(otel_exporter_otlp_endpoint=endpoint)) is True
    try:
        provider = tracing._process.installed.provider  # type: ignore[union-attr]
        attributes = provider.resource.attributes
        assert attributes["service.name"] == "pandora-users-test" and attributes["deployment.environment"] == "staging"
        assert attributes["service.version"]
        assert isinstance(provider.sampler, ParentBased)
        assert isinstance(provider.sampler._root, TraceIdRatioBased) and provider.sampler._root.rate == 0.25
        (processor,) = provider._active_span_processor._span_processors
        assert isinstance(processor, BatchSpanProcessor)
        exporter = processor._batch_processor._exporter
        assert isinstance(exporter, OTLPSpanExporter) and exporter._insecure is insecure
    finally:
        tracing.shutdown(timeout=5)
    assert not tracing.enabled()


def test_traceparent_round_trip(spans: InMemorySpanExporter) -> None:
    parent = tracing.extract({"traceparent": INCOMING})
    with tracing.span("child", parent=parent) as span:
        expected = f"00-{TRACE_ID}-{span.get_span_context().span_id:016x}-01"
        assert tracing.traceparent(span.get_span_context()) == expected
        assert tracing.current_trace() == {"traceparent": expected, "trace_id": TRACE_ID}
        assert tracing.current_ids() == (TRACE_ID, expected[36:52])
    child = one(spans, "child")
    assert hex_ids(child)[0] == TRACE_ID and parent_id(child) == "00f067aa0ba902b7"
    assert tracing.extract_headers([(b"traceparent", INCOMING.encode()), (b"x-other", b"1")]) is not None


@get("/api/v1/things/{thing_id:str}", sync_to_thread=False)
def thing(request: Request[Any, Any, Any]) -> dict[str, str]:
    request.state.principal = type("P", (), {"user_id": USER})()
    if request.path_params["thing_id"] == "missing":
        raise UserNotFound()
    return {"id": request.path_params["thing_id"]}


def http_app() -> Any:
    app = Litestar(route_handlers=[thing], exception_handlers=EXCEPTION_HANDLERS, logging_config=None)
    return TracingMiddleware(wrap(app, EdgeConfig()), listener="public")


async def test_http_server_span_name_attributes_and_parent(spans: InMemorySpanExporter) -> None:
    transport = httpx.ASGITransport(app=http_app(), client=("198.51.100.7", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ok = await client.get("/api/v1/things/abc", headers={"traceparent": INCOMING})
        missing = await client.get("/api/v1/things/missing", headers={"traceparent": INCOMING})
        edge_404 = await client.get("/api/v1/things/abc/")
    assert ok.status_code == 200 and "trace_id" not in ok.json()
    assert missing.status_code == 404 and missing.json()["trace_id"] == TRACE_ID
    server_spans = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert [s.name for s in server_spans] == ["GET /api/v1/things/{thing_id}"] * 2 + ["GET"]
    first = server_spans[0]
    assert hex_ids(first)[0] == TRACE_ID and parent_id(first) == "00f067aa0ba902b7"
    assert dict(first.attributes or {}) == {
        "http.request.method": "GET",
        "pandora.listener": "public",
        "http.route": "/api/v1/things/{thing_id}",
        "http.response.status_code": 200,
        "client.address": "198.51.100.7",
        "enduser.id": str(USER),
    }
    assert (server_spans[1].attributes or {})["http.response.status_code"] == 404
    # The edge's own 404 (trailing slash) is inside a span too: a fresh trace, whose id the body carries.
    assert edge_404.status_code == 404 and edge_404.json()["trace_id"] == hex_ids(server_spans[2])[0]
    assert server_spans[2].parent is None


def test_log_records_carry_the_current_trace_and_span(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(level="info", fmt="json", env="test")
    try:
        with tracing.span("work"):
            logger.info("inside")
        logger.info("outside")
    finally:
        configure(level="warning", fmt="console", env="test")
    inside, outside = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines())
    assert (inside["trace_id"], inside["span_id"]) == hex_ids(one(spans, "work"))
    assert "trace_id" not in outside and "span_id" not in outside


async def test_grpc_server_span_continues_the_metadata_context(spans: InMemorySpanExporter) -> None:
    fields = {f.name: None for f in dataclasses.fields(RpcDeps)}
    auth = ServiceAuth((ServiceToken("wallet", Secret("w" * 32)),))
    server = Server([UserService(RpcDeps(**{**fields, "auth": auth}))])  # type: ignore[arg-type]
    CallObserver(None).install(server)
    port = free_port()
    await server.start("127.0.0.1", port)
    try:
        from grpclib.client import Channel

        channel = Channel("127.0.0.1", port)
        try:
            with pytest.raises(GRPCError) as refused:
                await UserServiceStub(channel).GetUser(
                    pb.GetUserRequest(user_id=str(USER)), metadata={"traceparent": INCOMING}
                )
        finally:
            channel.close()
    finally:
        server.close()
        await server.wait_closed()
    assert refused.value.status is Status.UNAUTHENTICATED
    span = one(spans, "/pandora.user.v1.UserService/GetUser")
    assert span.kind is SpanKind.SERVER and hex_ids(span)[0] == TRACE_ID and parent_id(span) == "00f067aa0ba902b7"
    attributes = dict(span.attributes or {})
    assert attributes == {
        "rpc.system": "grpc",
        "rpc.service": "pandora.user.v1.UserService",
        "rpc.method": "GetUser",
        "rpc.grpc.status_code": Status.UNAUTHENTICATED.value,
    }

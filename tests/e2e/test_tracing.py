"""Traces end to end (SPEC §12.3, §2.6, §11): the real `pandora-users serve` and `project` processes export over
OTLP/gRPC to a collector this test runs in memory. One registration is one trace, from the caller's span through
the HTTP server span, the command, the append and every projector to the XADD whose context the stream entry
carries."""

from __future__ import annotations

import base64
import re
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import pytest
import redis
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from pandora_users import __version__
from pandora_users.domain import session as session_agg
from pandora_users.domain.context import Context
from pandora_users.store import credentials as cred
from pandora_users.store.app import EventStore
from rpc.gen import user_pb2 as pb
from rpc.gen.user_grpc import UserServiceStub
from tests.conftest import TEST_KEK, TEST_PEPPER
from tests.e2e.collector import Collected, Collector, named, one, running_collector
from tests.e2e.conftest import SERVICE_TOKEN, Api, spawn_service
from tests.e2e.procs import EXE, clean_env

PASSWORD = "correct horse battery staple"
PROJECTIONS = ("users", "event_log", "revocations", "forwarder")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def otel_env(collector: Collector, service_name: str, delay_ms: int) -> dict[str, str]:
    return {
        "OTEL_ENABLED": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_SERVICE_NAME": service_name,
        "OTEL_BSP_SCHEDULE_DELAY": str(delay_ms),
    }


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with running_collector() as running:
        yield running


@pytest.fixture(scope="module")
def traced_api(
    server_url: str, template_db: str, redis_url: str, collector: Collector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """A service of its own with OTEL_ENABLED=true (the shared `api` fixture runs with tracing off)."""
    workdir: Path = tmp_path_factory.mktemp("traced")
    overrides = otel_env(collector, "pandora-users-e2e", 100)
    with spawn_service(server_url, template_db, redis_url, workdir, **overrides) as running:
        yield running


def caller_context() -> tuple[str, str, str]:
    """(trace id, span id, traceparent) of a caller that starts a trace."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def stream_entry(url: str, stream: str, event_type: str, timeout: float = 30) -> tuple[str, dict[str, str]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries: list[tuple[str, dict[str, str]]] = client.xrange(stream)  # type: ignore[assignment]
        for entry_id, fields in entries:
            if fields["event_type"] == event_type:
                return entry_id, fields
        time.sleep(0.1)
    raise AssertionError(f"no {event_type} entry in {stream} after {timeout} s")


def at(spans: list[Collected], name: str, key: str, value: object) -> Collected | None:
    return next((s for s in spans if s.name == name and s.attributes.get(key) == value), None)


def test_one_trace_from_the_http_request_to_the_stream_entry(traced_api: Api, collector: Collector) -> None:
    trace_id, caller, traceparent = caller_context()
    email = f"traced-{uuid.uuid4().hex[:10]}@example.com"
    with traced_api.client(ip="198.51.100.23") as c:
        body = {"email": email, "password": PASSWORD, "first_name": "Ann", "last_name": "Lee"}
        registered = c.post("/api/v1/auth/register", json=body, headers={"traceparent": traceparent})
    assert registered.status_code == 201, registered.text
    user_id = registered.json()["user"]["id"]
    entry_id, fields = stream_entry(traced_api.redis_url, traced_api.stream, "user.registered")
    assert fields["user_id"] == user_id
    position, publish_name = int(fields["position"]), f"{traced_api.stream} publish"

    def complete(spans: list[Collected]) -> bool:
        consumed = all(at(spans, f"projection {p}", "pandora.position", position) for p in PROJECTIONS)
        return consumed and at(spans, publish_name, "messaging.message.id", entry_id) is not None

    spans = collector.wait(trace_id, complete)
    server = one(spans, "POST /api/v1/auth/register")
    assert server.kind == "SERVER" and server.parent_id == caller
    assert server.attributes == {
        "http.request.method": "POST",
        "http.route": "/api/v1/auth/register",
        "http.response.status_code": 201,
        "pandora.listener": "public",
        "client.address": "198.51.100.23",
    }
    assert server.resource["service.name"] == "pandora-users-e2e" and server.resource["service.version"] == __version__
    assert server.resource["deployment.environment"] == "test"
    command = one(spans, "command Register")
    assert command.kind == "INTERNAL" and command.child_of(server)
    assert command.attributes["pandora.aggregate_id"] == user_id and command.attributes["pandora.retries"] == 0
    append = one(spans, "eventstore.append")
    assert append.kind == "CLIENT" and append.child_of(command) and append.attributes["db.system"] == "postgresql"
    assert append.attributes["pandora.position.first"] <= position <= append.attributes["pandora.position.last"]
    assert one(spans, "password.hash").child_of(server)
    for projection in PROJECTIONS:
        consumer = at(spans, f"projection {projection}", "pandora.position", position)
        assert consumer is not None and consumer.kind == "CONSUMER" and consumer.child_of(command)
        assert consumer.attributes["pandora.event_type"] == "user.registered"
    forwarder = at(spans, "projection forwarder", "pandora.position", position)
    publish = at(spans, publish_name, "messaging.message.id", entry_id)
    assert forwarder is not None and publish is not None
    assert publish.kind == "PRODUCER" and publish.child_of(forwarder)
    assert publish.attributes["messaging.system"] == "redis"
    assert publish.attributes["messaging.destination.name"] == traced_api.stream
    metadata = msgspec.json.decode(fields["metadata"])
    assert metadata["traceparent"] == f"00-{trace_id}-{publish.span_id}-01" and metadata["trace_id"] == trace_id
    assert not any(s.error for s in spans)


def test_login_and_an_authenticated_read_are_traces_of_their_own(traced_api: Api, collector: Collector) -> None:
    email = f"login-{uuid.uuid4().hex[:10]}@example.com"
    login_trace, caller, login_parent = caller_context()
    read_trace, _, read_parent = caller_context()
    with traced_api.client() as c:
        body = {"email": email, "password": PASSWORD, "first_name": "Ann", "last_name": "Lee"}
        assert c.post("/api/v1/auth/register", json=body).status_code == 201
        credentials = {"email": email, "password": PASSWORD}
        login = c.post("/api/v1/auth/login", json=credentials, headers={"traceparent": login_parent})
        assert login.status_code == 200, login.text
        bearer = {"Authorization": f"Bearer {login.json()['access_token']}", "traceparent": read_parent}
        assert c.get("/api/v1/users/me", headers=bearer).status_code == 200

    def complete(spans: list[Collected]) -> bool:  # every projector's span, exported in its own batch
        projected = {s.name for s in spans if s.kind == "CONSUMER"}
        return bool(named(spans, "eventstore.append")) and projected == {f"projection {p}" for p in PROJECTIONS}

    spans = collector.wait(login_trace, complete)
    server = one(spans, "POST /api/v1/auth/login")
    command = one(spans, "command LogIn")
    assert server.parent_id == caller and command.child_of(server) and one(spans, "password.verify").child_of(server)
    assert one(spans, "eventstore.append").child_of(command)
    consumers = [s for s in spans if s.kind == "CONSUMER"]
    assert {s.name for s in consumers} == {f"projection {p}" for p in PROJECTIONS}
    assert all(s.child_of(command) and s.attributes["pandora.event_type"] == "user.logged_in" for s in consumers)
    user_id = login.json()["user"]["id"]
    read = collector.span(read_trace, "GET /api/v1/users/me")
    assert read.attributes["enduser.id"] == user_id and read.attributes["http.route"] == "/api/v1/users/me"


def test_error_responses_carry_the_trace_id(traced_api: Api, collector: Collector) -> None:
    trace_id, _, traceparent = caller_context()
    with traced_api.client() as c:
        body = {"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": "not the password 123"}
        wrong = c.post("/api/v1/auth/login", json=body, headers={"traceparent": traceparent})
        unknown = c.get("/api/v1/no-such-thing")
        slash = c.get("/api/v1/users/me/")
    admin = httpx.get(f"{traced_api.admin_url}/api/v1/admin/users", timeout=10)
    assert wrong.status_code == 401 and wrong.json()["trace_id"] == trace_id
    for response in (unknown, slash, admin):
        assert response.status_code in (401, 404) and HEX32.match(response.json()["trace_id"]), response.text
    assert collector.span(trace_id, "POST /api/v1/auth/login").attributes["http.response.status_code"] == 401
    admin_span = collector.span(admin.json()["trace_id"], "GET /api/v1/admin/users")
    assert admin_span.attributes["pandora.listener"] == "admin" and admin_span.parent_id is None
    assert collector.span(unknown.json()["trace_id"], "GET").attributes["http.response.status_code"] == 404


async def test_grpc_call_continues_the_callers_trace(traced_api: Api, collector: Collector) -> None:
    trace_id, caller, traceparent = caller_context()
    channel = Channel("127.0.0.1", traced_api.service.grpc_port)
    try:
        with pytest.raises(GRPCError) as missing:
            await UserServiceStub(channel).GetUser(
                pb.GetUserRequest(user_id=str(uuid.uuid4())),
                metadata={"authorization": f"Bearer {SERVICE_TOKEN}", "traceparent": traceparent},
            )
    finally:
        channel.close()
    assert missing.value.status is Status.NOT_FOUND
    span = collector.span(trace_id, "/pandora.user.v1.UserService/GetUser")
    assert span.kind == "SERVER" and span.parent_id == caller
    assert span.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "pandora.user.v1.UserService",
        "rpc.method": "GetUser",
        "rpc.grpc.status_code": Status.NOT_FOUND.value,
    }


def test_project_flushes_its_spans_on_shutdown(
    collector: Collector, event_store: EventStore, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """With a ten-minute export delay, the projector's spans can only arrive through the flush at SIGINT."""
    trace_id, caller, traceparent = caller_context()
    user_id = uuid.uuid4()
    _key, wrapped = event_store.keys.new_key(user_id)
    ctx = Context(metadata={"actor_role": "user", "traceparent": traceparent, "trace_id": trace_id})
    event = session_agg.log_in(
        uuid.uuid4(),
        user_id=user_id,
        email="flush@example.com",
        audience="pandora-api",
        expires_at=datetime(2100, 1, 1, tzinfo=UTC),
        ip_address=None,
        user_agent=None,
        ctx=ctx,
    )
    position = event_store.append([event], [cred.put_data_key(user_id, wrapped)])
    stream = f"e2e-flush-{uuid.uuid4().hex[:8]}:events"
    env = clean_env(
        APP_ENV="test",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DATA_DIR=str(tmp_path / "data"),
        DATA_ENCRYPTION_KEY=base64.b64encode(TEST_KEK).decode(),
        EMAIL_INDEX_KEY=TEST_PEPPER.decode(),
        EVENTS_STREAM=stream,
        LOG_LEVEL="info",
        **otel_env(collector, "pandora-users-project", 600_000),
    )
    log = tmp_path / "project.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([EXE, "project", "forwarder"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        entry_id, fields = stream_entry(redis_url, stream, "user.logged_in")
        assert int(fields["position"]) == position and collector.trace(trace_id) == []
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        redis.Redis.from_url(redis_url).delete(stream)
    assert proc.returncode == 0, log.read_text()[-3000:]
    spans = collector.trace(trace_id)
    forwarder = one(spans, "projection forwarder")
    assert forwarder.kind == "CONSUMER" and forwarder.parent_id == caller
    assert forwarder.resource["service.name"] == "pandora-users-project"
    publish = one(spans, f"{stream} publish")
    assert publish.child_of(forwarder) and publish.attributes["messaging.message.id"] == entry_id
    assert msgspec.json.decode(fields["metadata"])["traceparent"] == f"00-{trace_id}-{publish.span_id}-01"

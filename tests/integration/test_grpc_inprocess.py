"""The gRPC listener in-process: the real composition (`start_rpc` over a real runtime, PostgreSQL, Redis),
grpclib clients, a raw HTTP/2 client for what the stubs hide, and grpclib's ChannelFor for handler logic."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import functools
import ipaddress
import itertools
import logging
import socket
import ssl
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import h2.config
import h2.connection
import h2.events
import h2.settings
import msgspec
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest
from grpclib.testing import ChannelFor
from loguru import logger
from prometheus_client import REGISTRY

from api.consistency import encode_token
from pandora_users.bootstrap import Runtime, build_runtime, open_store, projection_deps
from pandora_users.commands import registration
from pandora_users.config.settings import Secret, ServiceToken, Settings, load_settings
from pandora_users.domain.context import Context
from pandora_users.domain.errors import ERROR_TABLE, UserNotFound
from pandora_users.workers import bind
from projections.registry import Supervisor
from rpc.auth import ServiceAuth
from rpc.deps import RpcDeps
from rpc.errors import STATUS_OF
from rpc.gen import user_pb2 as pb
from rpc.gen.user_grpc import UserServiceStub
from rpc.health import HealthMonitor
from rpc.server import RpcServer, rpc_deps, start_rpc
from rpc.service import UserService
from rpc.streaming import EventFeed, Selection
from rpc.transport import CoalescingTransport
from tests.conftest import TEST_KEK, TEST_PEPPER
from tests.integration.test_registration import reg

TOKEN = "inprocess-wallet-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@dataclasses.dataclass
class Env:
    settings: Settings
    runtime: Runtime
    rpc: RpcServer
    port: int


async def serve_rpc(runtime: Runtime) -> tuple[RpcServer, int]:
    """The gRPC listener on a free port, as `serve` starts it (a bound socket of `workers.bind`)."""
    sock = bind("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    return await start_rpc(runtime, sock), port


@pytest.fixture(scope="module")
async def env(
    server_url: str, template_db: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Env]:
    name = f"pandora_grpc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    settings = load_settings(
        {
            "APP_ENV": "test",
            "DATABASE_URL": server_url.rsplit("/", 1)[0] + "/" + name,
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": f"grpc-{name}:",
            "DATA_DIR": str(tmp_path_factory.mktemp("grpc")),
            "DATA_ENCRYPTION_KEY": base64.b64encode(TEST_KEK).decode(),
            "EMAIL_INDEX_KEY": TEST_PEPPER.decode(),
            "SERVICE_TOKENS": f"wallet:{TOKEN}",
            "GRPC_REFLECTION": "true",
            "ARGON2_MEMORY_KIB": "8192",
            "ARGON2_PARALLELISM": "1",
            "SHUTDOWN_TIMEOUT": "2s",
        }
    )
    store = open_store(settings)
    runtime = await build_runtime(settings, store)
    supervisor = Supervisor(projection_deps(settings, store), ("users", "event_log"), idle_poll=0.2)
    supervisor.start()
    rpc, port = await serve_rpc(runtime)
    try:
        yield Env(settings, runtime, rpc, port)
    finally:
        await rpc.close()
        await asyncio.to_thread(supervisor.stop, 10)
        await runtime.close()
        store.close()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def register(env: Env) -> registration.SessionGrant:
    email = f"inproc-{uuid.uuid4().hex[:8]}@example.com"
    return await registration.register(env.runtime.write, reg(email), Context())


# --- pure parts ------------------------------------------------------------------------------------------


def test_every_error_code_has_the_grpc_status_of_the_shared_table() -> None:
    assert set(STATUS_OF) == set(ERROR_TABLE)
    for code, (_, grpc_name, _) in ERROR_TABLE.items():
        assert STATUS_OF[code].name == grpc_name


def test_service_auth() -> None:
    auth = ServiceAuth(
        (ServiceToken("wallet", Secret("a" * 32)), ServiceToken("kyc", Secret("b" * 32), frozenset({"GetUser"})))
    )
    assert auth.authenticate("Bearer " + "a" * 32).name == "wallet"
    kyc = auth.authenticate("bEaReR " + "b" * 32)
    kyc.authorize("GetUser")
    with pytest.raises(Exception, match="not allowed") as denied:
        kyc.authorize("ListUsers")
    assert denied.value.grpc_status == "PERMISSION_DENIED"  # type: ignore[attr-defined]
    for header in (None, "", "Bearer", "Bearer " + "a" * 31, "Basic " + "a" * 32, "a" * 32, "Bearer  " + "a" * 32):
        with pytest.raises(Exception, match="missing or invalid service token"):
            auth.authenticate(header)
    assert ServiceAuth(()).authenticate(None).actor == "service:anonymous"


async def test_health_monitor_follows_postgres_and_shutdown() -> None:
    up, stopping, ended = [True], [False], []

    async def ping() -> None:
        if not up[0]:
            raise ConnectionRefusedError("down")

    monitor = HealthMonitor(ping, lambda: stopping[0], interval=0.05)
    monitor.on_shutdown = lambda: ended.append(True)
    await monitor.start()
    assert monitor.status.__status__() is True
    up[0] = False
    await asyncio.sleep(0.2)
    assert monitor.status.__status__() is False
    up[0] = True
    await asyncio.sleep(0.2)
    assert monitor.status.__status__() is True
    stopping[0] = True
    await asyncio.sleep(0.2)
    assert monitor.status.__status__() is False and ended == [True]
    up[0], stopping[0] = True, False
    await asyncio.sleep(0.1)
    assert monitor.status.__status__() is False  # shutdown is final
    await monitor.close()


# --- over TCP --------------------------------------------------------------------------------------------


async def test_reflection_lists_the_services_when_enabled(env: Env) -> None:
    channel = Channel("127.0.0.1", env.port)
    try:
        async with ServerReflectionStub(channel).ServerReflectionInfo.open() as stream:
            await stream.send_message(ServerReflectionRequest(list_services=""), end=True)
            reply = await stream.recv_message()
        assert reply is not None
        names = {s.name for s in reply.list_services_response.service}
        assert {"pandora.user.v1.UserService", "grpc.health.v1.Health"} <= names
    finally:
        channel.close()


async def test_a_response_goes_out_in_one_write(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its HEADERS, DATA and trailing HEADERS (and the request's WINDOW_UPDATE) leave in one `writelines`
    on the socket's transport, not one system call each (rpc/transport.py)."""
    flushed: list[int] = []
    flush = CoalescingTransport.flush

    def counting(self: CoalescingTransport) -> None:
        flushed.append(len(self._pending))
        flush(self)

    channel = Channel("127.0.0.1", env.port)
    try:
        await HealthStub(channel).Check(HealthCheckRequest())  # connection set up, settings exchanged
        monkeypatch.setattr(CoalescingTransport, "flush", counting)
        for _ in range(3):
            reply = await HealthStub(channel).Check(HealthCheckRequest())
            assert reply.status == HealthCheckResponse.SERVING
    finally:
        channel.close()
    assert len(flushed) == 3 and all(chunks >= 3 for chunks in flushed), flushed


async def test_unary_calls_and_trailing_error_code_with_grpclib(env: Env) -> None:
    grant = await register(env)
    channel = Channel("127.0.0.1", env.port)
    try:
        stub = UserServiceStub(channel)
        md = {**AUTH, "x-consistency-token": encode_token(grant.position or 0), "x-request-id": "req-1"}
        reply = await stub.GetUser(pb.GetUserRequest(user_id=str(grant.user.id)), metadata=md)
        assert reply.user.email == grant.user.email
        async with stub.GetUser.open(metadata=AUTH) as stream:
            await stream.send_message(pb.GetUserRequest(user_id=str(uuid.uuid4())), end=True)
            with pytest.raises(GRPCError) as err:
                await stream.recv_message()
        assert err.value.status is Status.NOT_FOUND and err.value.message == "user not found"
        assert stream.trailing_metadata is not None and stream.trailing_metadata["x-error-code"] == "USER_NOT_FOUND"
        assert stream.trailing_metadata["x-request-id"]
        with pytest.raises(GRPCError) as stale:
            await stub.GetUser(
                pb.GetUserRequest(user_id=str(grant.user.id)), metadata={**AUTH, "x-consistency-token": "c1.999999999"}
            )
        assert stale.value.status is Status.INVALID_ARGUMENT
    finally:
        channel.close()


def _frame(message: bytes) -> bytes:
    return struct.pack(">?I", False, len(message)) + message


def _raw_call(
    port: int, path: str, message: bytes, headers: list[tuple[str, str]]
) -> tuple[int | None, dict[str, str]]:
    """One call over a bare HTTP/2 connection: the server's MAX_CONCURRENT_STREAMS, and its trailers."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    max_streams, trailers = None, {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn.initiate_connection()
        request = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost")]
        request += [("content-type", "application/grpc"), ("te", "trailers"), *headers]
        conn.send_headers(1, request)
        conn.send_data(1, _frame(message), end_stream=True)
        sock.sendall(conn.data_to_send())
        while not trailers:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                    max_streams = changed.new_value if changed else max_streams
                elif isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
                    fields = dict(event.headers)
                    if "grpc-status" in fields:
                        trailers = fields
            sock.sendall(conn.data_to_send())
    return max_streams, trailers


def _request_headers(path: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
        ("content-type", "application/grpc"), ("te", "trailers"), ("authorization", f"Bearer {TOKEN}"),
    ]  # fmt: skip


def _leave_mid_calls(port: int, path: str, message: bytes, calls: int, after: float, *, goaway: bool = True) -> None:
    """Start `calls` calls on one connection and, once the first answer came (or `after` seconds passed), leave:
    send GOAWAY and read until the server closes the connection, or (`goaway=False`) just drop the connection."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        conn.initiate_connection()
        for stream_id in range(1, 2 * calls, 2):
            conn.send_headers(stream_id, _request_headers(path))
            conn.send_data(stream_id, _frame(message), end_stream=True)
        sock.sendall(conn.data_to_send())
        sock.settimeout(after)
        with contextlib.suppress(TimeoutError):
            while not any(isinstance(e, h2.events.ResponseReceived) for e in conn.receive_data(sock.recv(65536))):
                pass
        if not goaway:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # closed with a reset
            return
        sock.settimeout(15)
        conn.close_connection()  # GOAWAY: the calls still running are cut off
        sock.sendall(conn.data_to_send())
        while sock.recv(65536):
            pass


def _grpc_count(rpc: str, status: str) -> float:
    labels = {"method": f"/pandora.user.v1.UserService/{rpc}", "status": status}
    return REGISTRY.get_sample_value("pandora_user_service_grpc_requests_total", labels) or 0.0


def _panics() -> float:
    return REGISTRY.get_sample_value("pandora_user_service_panics_total", {"component": "grpc"}) or 0.0


async def _projected(env: Env, user_id: uuid.UUID) -> None:
    for _ in range(100):
        if await env.runtime.db.fetchval("SELECT 1 FROM users WHERE id = $1", user_id):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the user was not projected")


async def _after_calls_ended(statuses: tuple[str, ...], expected: float) -> dict[str, float]:
    """The GetUser counts by status once they add up to `expected` (the last calls end just after the close)."""
    for _ in range(100):
        counts = {status: _grpc_count("GetUser", status) for status in statuses}
        if sum(counts.values()) >= expected:
            return counts
        await asyncio.sleep(0.05)
    return counts


async def test_a_call_waiting_when_its_caller_leaves_ends_cancelled(env: Env) -> None:
    grant = await register(env)
    await _projected(env, grant.user.id)
    key = f"{env.settings.redis_key_prefix}consistency:service:wallet"
    await env.runtime.redis.set(key, 10**12, ex=60)  # the caller's "last write" is far ahead: the call waits
    before = _grpc_count("GetUser", "CANCELLED"), _grpc_count("GetUser", "SERVICE_BUSY")
    request = pb.GetUserRequest(user_id=str(grant.user.id)).SerializeToString()
    try:
        await asyncio.to_thread(_leave_mid_calls, env.port, "/pandora.user.v1.UserService/GetUser", request, 1, 0.3)
        counts = await _after_calls_ended(("CANCELLED",), before[0] + 1)
    finally:
        await env.runtime.redis.delete(key)
    assert counts["CANCELLED"] == before[0] + 1
    assert _grpc_count("GetUser", "SERVICE_BUSY") == before[1]


async def test_a_call_that_swallows_its_cancellation_still_ends_cancelled(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A call whose cancellation something swallowed (Python 3.11's asyncio.wait_for can) and which then answers
    as if nothing happened ends as one call (counted under the status it wrote), with no error logged: grpclib
    logs "Failed to handle cancellation" for a cancelled call that does not end with CancelledError."""

    async def swallowing_wait(self: RpcDeps, call: Any, projections: Any) -> int:
        with contextlib.suppress(asyncio.CancelledError):  # the caller leaves while the call waits here
            await asyncio.sleep(30)
        raise UserNotFound()  # answered as if nothing happened

    monkeypatch.setattr(RpcDeps, "read_wait", swallowing_wait)
    statuses = ("NOT_FOUND", "CANCELLED", "INTERNAL", "UNKNOWN")
    before = {status: _grpc_count("GetUser", status) for status in statuses}
    request = pb.GetUserRequest(user_id=str(uuid.uuid4())).SerializeToString()
    path = "/pandora.user.v1.UserService/GetUser"
    # A dropped connection: asyncio then drops the call's writes silently, so nothing else ends it cancelled.
    await asyncio.to_thread(_leave_mid_calls, env.port, path, request, 1, 0.3, goaway=False)
    counts = await _after_calls_ended(statuses, sum(before.values()) + 1)
    assert counts == {**before, "NOT_FOUND": before["NOT_FOUND"] + 1}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("goaway", [True, False], ids=["goaway", "dropped"])
async def test_calls_answered_as_their_caller_leaves_end_cancelled_not_as_errors(
    env: Env, goaway: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller leaving amid 32 calls (GOAWAY, or a dropped connection), 10 times: the calls end OK or CANCELLED;
    none INTERNAL, no panic, nothing logged as an error (by us or by grpclib).

    A call whose answer was ready in the loop iteration that handled the GOAWAY used to fail its write and be
    counted and logged as an unhandled error (INTERNAL, a panic, and grpclib's "Failed to handle cancellation").
    """
    grant = await register(env)
    await _projected(env, grant.user.id)
    # Reads answered from memory all end within a millisecond, before the caller can leave: spread the answers
    # over 0-31 ms, so that some are ready as the caller leaves and some come after.
    user_row, spread = RpcDeps.user_row, itertools.count()

    async def spread_user_row(self: RpcDeps, call: Any, user_id: uuid.UUID) -> Any:
        await asyncio.sleep(next(spread) % 32 / 1000)
        return await user_row(self, call, user_id)

    monkeypatch.setattr(RpcDeps, "user_row", spread_user_row)
    statuses = ("OK", "CANCELLED", "INTERNAL")
    before = {status: _grpc_count("GetUser", status) for status in statuses}
    panics = _panics()
    errors: list[str] = []
    sink = logger.add(lambda message: errors.append(str(message)), level="ERROR")
    request = pb.GetUserRequest(user_id=str(grant.user.id)).SerializeToString()
    path = "/pandora.user.v1.UserService/GetUser"
    try:
        for _ in range(10):
            await asyncio.to_thread(_leave_mid_calls, env.port, path, request, 32, 1.0, goaway=goaway)
        await asyncio.sleep(0.5)  # the last calls end just after their connection closed
    finally:
        logger.remove(sink)
    errors += [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    counts = {status: _grpc_count("GetUser", status) for status in statuses}
    assert counts["OK"] > before["OK"] and counts["CANCELLED"] > before["CANCELLED"]  # some answered, some cut off
    assert counts["INTERNAL"] == before["INTERNAL"]
    assert _panics() == panics
    assert errors == []


async def test_at_most_100_streams_and_the_server_enforces_deadlines(env: Env) -> None:
    request = pb.StreamEventsRequest(from_position=10**12, follow=True).SerializeToString()
    headers = [("authorization", f"Bearer {TOKEN}"), ("grpc-timeout", "300m")]
    path = "/pandora.user.v1.UserService/StreamEvents"
    started = asyncio.get_running_loop().time()
    max_streams, trailers = await asyncio.to_thread(_raw_call, env.port, path, request, headers)
    assert max_streams == 100
    # The client never cancels: the server itself ends the call at its deadline.
    assert trailers["grpc-status"] == str(Status.DEADLINE_EXCEEDED.value) and trailers["x-error-code"] == "SERVICE_BUSY"
    assert 0.25 < asyncio.get_running_loop().time() - started < 5


async def test_notify_wakes_a_following_stream_before_any_poll(env: Env) -> None:
    runtime = env.runtime
    connect = functools.partial(asyncpg.connect, env.settings.resolved_database_url.get())  # type: ignore[union-attr]
    feed = EventFeed(runtime.db, runtime.store, connect, poll_interval=30)
    feed.start()
    await asyncio.sleep(0.3)  # LISTEN is set up
    head = await runtime.db.fetchval("SELECT coalesce(max(notification_id), 0) FROM pandora_events")
    events = feed.events(Selection.of(head + 1, ["user.registered"], None), follow=True)
    first = asyncio.create_task(anext(events))
    await asyncio.sleep(0.2)
    grant = await register(env)
    entry = await asyncio.wait_for(first, 3)
    assert entry.event_type == "user.registered" and entry.user_id == str(grant.user.id)
    second = asyncio.create_task(anext(events))
    await asyncio.sleep(0.1)
    feed.close()
    with pytest.raises(Exception, match="shutting down"):
        await asyncio.wait_for(second, 3)
    await events.aclose()
    await feed.wait_closed()


async def test_shutdown_ends_streams_refuses_calls_and_reports_not_serving(env: Env) -> None:
    rpc, port = await serve_rpc(env.runtime)
    channel = Channel("127.0.0.1", port)
    try:
        stub = UserServiceStub(channel)
        async with HealthStub(channel).Watch.open() as watch, stub.StreamEvents.open(metadata=AUTH) as follow:
            await watch.send_message(HealthCheckRequest(service="pandora.user.v1.UserService"), end=True)
            assert (await watch.recv_message()).status == HealthCheckResponse.SERVING  # type: ignore[union-attr]
            await follow.send_message(pb.StreamEventsRequest(from_position=10**12, follow=True), end=True)
            await asyncio.sleep(0.2)
            rpc.begin_shutdown()
            assert (await watch.recv_message()).status == HealthCheckResponse.NOT_SERVING  # type: ignore[union-attr]
            with pytest.raises(GRPCError) as ended:
                await follow.recv_message()
            assert ended.value.status is Status.UNAVAILABLE
            assert (
                follow.trailing_metadata is not None
                and follow.trailing_metadata["x-error-code"] == "SERVICE_UNAVAILABLE"
            )
            with pytest.raises(GRPCError) as refused:
                await stub.ValidateUser(pb.ValidateUserRequest(user_id=str(uuid.uuid4())), metadata=AUTH)
            assert refused.value.status is Status.UNAVAILABLE
            started = asyncio.get_running_loop().time()
            await rpc.close()  # the open health watcher does not hold shutdown for the grace period (2 s)
            assert asyncio.get_running_loop().time() - started < 1.5
            assert await watch.recv_message() is None
            with pytest.raises(GRPCError) as watch_ended:
                await watch.recv_trailing_metadata()
            assert watch_ended.value.status is Status.UNAVAILABLE
    finally:
        channel.close()
        await rpc.close()


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    now = dt.datetime.now(dt.UTC)

    def issue(subject: str, key: Any, issuer: x509.Name, signer: Any, *, ca: bool, san: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    files: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = issue("test ca", ca_key, ca_name, ca_key, ca=True, san=False)
    for name, cert, key in (
        ("ca", ca, ca_key),
        *((n, None, ec.generate_private_key(ec.SECP256R1())) for n in ("server", "client")),
    ):
        issued = cert or issue(name, key, ca_name, ca_key, ca=False, san=name == "server")
        files[f"{name}.crt"] = directory / f"{name}.crt"
        files[f"{name}.crt"].write_bytes(issued.public_bytes(serialization.Encoding.PEM))
        files[f"{name}.key"] = directory / f"{name}.key"
        files[f"{name}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return files


async def test_mutual_tls_1_3(env: Env, tmp_path: Path) -> None:
    files = _certificates(tmp_path)
    settings = msgspec.structs.replace(
        env.settings,
        grpc_tls_cert_file=files["server.crt"],
        grpc_tls_key_file=files["server.key"],
        grpc_tls_client_ca_file=files["ca.crt"],
    )
    rpc, port = await serve_rpc(dataclasses.replace(env.runtime, settings=settings))

    def client(*, cert: bool, max_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=files["ca.crt"])
        context.maximum_version = max_version
        context.set_alpn_protocols(["h2"])
        if cert:
            context.load_cert_chain(files["client.crt"], files["client.key"])
        return context

    async def check(context: ssl.SSLContext) -> int:
        channel = Channel("127.0.0.1", port, ssl=context)
        try:
            reply = await asyncio.wait_for(HealthStub(channel).Check(HealthCheckRequest()), 5)
            return int(reply.status)
        finally:
            channel.close()

    try:
        assert await check(client(cert=True)) == HealthCheckResponse.SERVING
        for refused in (client(cert=False), client(cert=True, max_version=ssl.TLSVersion.TLSv1_2)):
            with pytest.raises((OSError, StreamTerminatedError, GRPCError)):
                await check(refused)
    finally:
        await rpc.close()


async def test_handlers_in_memory_as_service_anonymous(env: Env) -> None:
    """ChannelFor runs the handlers without the server's hooks; with no SERVICE_TOKENS every call is anonymous."""
    grant = await register(env)
    runtime = env.runtime
    feed = EventFeed(runtime.db, runtime.store, functools.partial(asyncpg.connect, "postgresql://unused"))
    deps = dataclasses.replace(rpc_deps(runtime, feed, None), auth=ServiceAuth(()))
    async with ChannelFor([UserService(deps)]) as channel:
        stub = UserServiceStub(channel)
        request = pb.UpdateKYCRequest(user_id=str(grant.user.id), kyc_status="rejected", updated_by="clerk")
        updated = await stub.UpdateKYCStatus(request, metadata={"x-reason": "blurry scan"})
        assert updated.user.kyc_status == "rejected"
        history = await stub.GetUserHistory(
            pb.GetUserHistoryRequest(user_id=str(grant.user.id), event_types=["user.kyc.updated"])
        )
        assert len(history) == 1
        metadata = dict(history[0].metadata)
        assert metadata["actor_id"] == "service:anonymous" and metadata["actor_role"] == "service"
        assert (metadata["reason"], metadata["on_behalf_of"]) == ("blurry scan", "clerk")
        valid = await stub.ValidateUser(pb.ValidateUserRequest(user_id=str(grant.user.id)))
        assert (valid.is_valid, valid.is_active, valid.kyc_status) == (True, True, "rejected")
        with pytest.raises(GRPCError) as bad:
            await stub.UpdateKYCStatus(request, metadata={"x-reason": "r" * 1001})
        assert bad.value.status is Status.INVALID_ARGUMENT

"""The gRPC listener (grpclib): `pandora.user.v1.UserService`, `grpc.health.v1`, and reflection when enabled.

Shutdown (SPEC §11): health turns NOT_SERVING and StreamEvents streams end with UNAVAILABLE as soon as the
process starts shutting down; new UserService calls are refused with UNAVAILABLE; calls in flight get up to
SHUTDOWN_TIMEOUT to finish before the server closes. HTTP/2 allows at most 100 concurrent streams per
connection (h2's advertised SETTINGS_MAX_CONCURRENT_STREAMS, checked by a test).
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server
from loguru import logger

from api.consistency import Consistency
from api.idempotency import IdempotencyStore
from api.revocation import SessionLiveness
from pandora_users.audit.access_log import AccessLogWriter
from pandora_users.bootstrap import crypto_keys, database_url
from rpc.auth import ServiceAuth
from rpc.deps import RpcDeps
from rpc.health import HealthMonitor
from rpc.hooks import CallObserver
from rpc.service import UserService
from rpc.streaming import EventFeed
from rpc.tls import server_context
from rpc.transport import CoalescingServer

if TYPE_CHECKING:
    from pandora_users.bootstrap import Runtime


@dataclass
class RpcServer:
    server: Server
    health: HealthMonitor
    feed: EventFeed
    observer: CallObserver
    grace: float
    owned_access_log: AccessLogWriter | None = None
    closing: bool = field(default=False)

    def begin_shutdown(self) -> None:
        """NOT_SERVING, event streams end with UNAVAILABLE, new UserService calls are refused."""
        if not self.closing:
            self.closing = True
            self.health.stop()
            self.feed.close()

    async def close(self) -> None:
        """Shut down as above, let calls in flight finish (up to the grace period), then stop the server."""
        self.begin_shutdown()
        if not await self.observer.wait_idle(self.grace):
            running = self.observer.in_flight
            logger.warning("gRPC: {} calls still running after {} s; cancelling them", running, self.grace)
        await self.health.close()
        self.server.close()
        await self.server.wait_closed()
        await self.feed.wait_closed()
        if self.owned_access_log is not None:
            await self.owned_access_log.close()


def rpc_deps(runtime: Runtime, feed: EventFeed, idempotency: IdempotencyStore | None) -> RpcDeps:
    s = runtime.settings
    consistency = Consistency(runtime.db, runtime.redis, prefix=s.redis_key_prefix, timeout=s.consistency_wait_timeout)
    liveness = SessionLiveness(
        runtime.redis,
        runtime.db,
        prefix=s.redis_key_prefix,
        access_ttl=s.jwt_access_token_expiry,
        mark_key=consistency.mark_key,
    )
    if idempotency is None:
        key = crypto_keys(s)["data_encryption_key"]
        idempotency = IdempotencyStore(runtime.redis, s.redis_key_prefix, key, ttl=s.idempotency_ttl)
    auth = ServiceAuth(s.service_tokens)
    if runtime.refresher is not None:
        runtime.refresher.on_service_tokens = auth.replace  # SERVICE_TOKENS are applied on refresh (SPEC §10.3)
    return RpcDeps(
        write=runtime.write,
        store=runtime.store,
        pool=runtime.db,
        tokens=runtime.tokens,
        session_state=liveness.state,
        consistency=consistency,
        idempotency=idempotency,
        auth=auth,
        feed=feed,
        users=runtime.users,
    )


async def start_rpc(
    runtime: Runtime,
    sock: socket.socket,
    access_log: AccessLogWriter | None = None,
    idempotency: IdempotencyStore | None = None,
) -> RpcServer:
    """Start the listener on a bound socket (`workers.bind`).

    Without `access_log` (a process serving gRPC only) it owns a writer of its own.
    """
    s = runtime.settings
    owned = None
    if access_log is None:
        owned = access_log = AccessLogWriter(runtime.db, retention_days=s.audit_logs_keep_for_days)
        owned.start()
    feed = EventFeed(runtime.db, runtime.store, functools.partial(asyncpg.connect, database_url(s)))
    deps = rpc_deps(runtime, feed, idempotency)
    if deps.auth.anonymous:
        logger.warning("SERVICE_TOKENS is empty: every gRPC call is accepted as service:anonymous")
    readiness = runtime.readiness
    health = HealthMonitor(
        lambda: runtime.db.fetchval("SELECT 1"),
        shutting_down=lambda: bool(getattr(readiness, "shutting_down", False)),
    )
    user_service = UserService(deps)
    services: list[Any] = [user_service, health.service(user_service)]
    if s.grpc_reflection:
        services = ServerReflection.extend(services)
    server = CoalescingServer(services)
    observer = CallObserver(access_log)
    observer.install(server)
    rpc = RpcServer(server, health, feed, observer, grace=s.shutdown_timeout, owned_access_log=owned)
    health.on_shutdown = rpc.begin_shutdown
    observer.closing = lambda: rpc.closing
    await health.start()
    feed.start()
    tls = server_context(s.grpc_tls_cert_file, s.grpc_tls_key_file, s.grpc_tls_client_ca_file)
    await server.start(sock=sock, ssl=tls)
    host, port = sock.getsockname()[:2]
    logger.info("gRPC listening on {}:{} ({})", host, port, "TLS" if tls else "plaintext")
    return rpc

"""`pandora-users serve`: every listener and worker in one process, until SIGINT/SIGTERM.

Shutdown (SPEC §11): readiness turns not-ready at once, the listeners stop accepting and let in-flight
requests finish for up to SHUTDOWN_TIMEOUT, pools close, and the embedded servers this process started stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
import uvloop
from loguru import logger

from api.app import create_public_app, wrap
from api.audit import AccessLogMiddleware
from api.auth import ADMIN, PUBLIC, Authenticator
from api.consistency import Consistency
from api.deps import ApiDeps, Limits
from api.edge import EdgeConfig
from api.http_protocol import HttpProtocol
from api.idempotency import IdempotencyStore
from api.idempotent import IdempotencyMiddleware
from api.limits import RequestLimits, limit_table
from api.metrics_mw import MetricsMiddleware
from api.ratelimit import RateLimiter
from api.revocation import SessionLiveness
from api.tracing_mw import traced
from pandora_users.audit.access_log import AccessLogWriter
from pandora_users.audit.cleanup import cleanup_forever
from pandora_users.bootstrap import (
    Runtime,
    build_runtime,
    crypto_keys,
    database_url,
    ensure_schema,
    metrics_endpoint,
    open_store,
    projection_deps,
    wait_for_postgres,
    with_dependencies,
)
from pandora_users.config.settings import Settings, settings_from_env
from pandora_users.fatal import Fatal
from pandora_users.infra.embedded import EmbeddedServers
from pandora_users.logs import configure
from pandora_users.observability import metrics as m
from pandora_users.observability import tracing
from pandora_users.store.app import EventStore
from pandora_users.workers import SHARED_ROLES, HttpWorkers, bind, is_worker
from projections.registry import NAMES, Supervisor
from rpc.server import start_rpc


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us (several servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


ALL_ROLES = frozenset({"public", "admin", "rpc", "projectors", "cleanup"})
ROLES = {
    "serve": ALL_ROLES,
    "api": frozenset({"public"}),
    "admin": frozenset({"admin"}),
    "rpc": frozenset({"rpc"}),
}


def serve(roles: frozenset[str] = ALL_ROLES) -> int:
    """Run the given roles in this process: `serve` runs them all, `api`/`admin`/`rpc` one listener each.

    A worker child (see `workers`) runs the public and/or gRPC listener beside its parent, on the same ports.
    """
    worker = is_worker()
    settings = settings_from_env()
    configure(level=settings.log_level, fmt=settings.log_format, env=settings.app_env)
    tracing.setup(settings)
    for variable, message in settings.warnings:
        logger.warning("configuration: {}: {}", variable, message)
    servers = EmbeddedServers(settings.data_dir)
    try:
        settings = with_dependencies(settings, servers)
        wait_for_postgres(database_url(settings))
        store = open_store(settings, serving=True)
        try:
            ensure_schema(settings, store, migrate=settings.auto_migrate and not worker)
            # uvicorn's `loop="uvloop"` applies only when uvicorn owns the loop; here `serve` does.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(_serve(settings, store, roles, worker))
        finally:
            store.close()
    finally:
        tracing.shutdown(settings.shutdown_timeout)  # flush the spans still queued (SPEC §11)
        servers.stop()


def _listener(app: Any, host: str, port: int, settings: Settings) -> _Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # Forwarded headers are honoured only from TRUSTED_PROXIES, by our edge middleware (SPEC §7.8);
        # uvicorn's own handling would trust 127.0.0.1 by default and rewrite the peer address first.
        proxy_headers=False,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout) or 1,
        http=HttpProtocol,
        loop="uvloop",
    )
    return _Server(config)


def edge_config(settings: Settings) -> EdgeConfig:
    origins = settings.cors_allowed_origins
    return EdgeConfig(
        trusted_proxies=settings.trusted_proxies,
        cors_origins=frozenset(o for o in origins if o != "*"),
        cors_any="*" in origins,
    )


def api_deps(runtime: Runtime, audience: str = PUBLIC) -> ApiDeps:
    settings = runtime.settings
    consistency = Consistency(
        runtime.db, runtime.redis, prefix=settings.redis_key_prefix, timeout=settings.consistency_wait_timeout
    )
    liveness = SessionLiveness(
        runtime.redis,
        runtime.db,
        prefix=settings.redis_key_prefix,
        access_ttl=settings.jwt_access_token_expiry,
        mark_key=consistency.mark_key,
    )
    runtime.write.on_sessions_ended = liveness.record
    return ApiDeps(
        write=runtime.write,
        store=runtime.store,
        tokens=runtime.tokens,
        authenticator=Authenticator(runtime.tokens, liveness.state_and_mark, audience=audience),
        consistency=consistency,
        pool=runtime.db,
        redis=runtime.redis,
        users=runtime.users,
    )


@dataclass
class HttpParts:
    """The HTTP edge's stateful helpers: limiter, idempotency store, access-log writer, cleanup job."""

    limits: RequestLimits
    idempotency: IdempotencyStore
    access_log: AccessLogWriter
    cleanup: asyncio.Task[None] | None

    @classmethod
    def start(cls, runtime: Runtime, *, cleanup_job: bool) -> HttpParts:
        s = runtime.settings
        limiter = RateLimiter(runtime.redis, s.redis_key_prefix, enabled=s.rate_limit_enabled)
        idempotency = IdempotencyStore(
            runtime.redis, s.redis_key_prefix, crypto_keys(s)["data_encryption_key"], ttl=s.idempotency_ttl
        )
        writer = AccessLogWriter(
            runtime.db,
            retention_days=s.audit_logs_keep_for_days,
            on_written=_count_written,
            on_failure=_count_failed,
        )
        writer.start()
        cleanup = None
        if cleanup_job:
            cleanup = asyncio.create_task(
                cleanup_forever(
                    runtime.db,
                    s.audit_cleanup_interval,
                    batch_size=s.audit_cleanup_batch_size,
                    session_record_retention=s.session_record_retention,
                )
            )
        return cls(RequestLimits(limiter, limit_table(s)), idempotency, writer, cleanup)

    async def close(self) -> None:
        if self.cleanup is not None:
            self.cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.cleanup
        await self.access_log.close()


def _count_written(entries: Any) -> None:
    for entry in entries:
        m.audit_created.labels(entry.event_type, entry.severity).inc()


def _count_failed(entries: Any, error_type: str) -> None:
    m.audit_failures.labels(error_type).inc(len(entries))


def public_app(runtime: Runtime, parts: HttpParts) -> Any:
    """The public listener: edge middleware → access log → idempotency → Litestar."""
    settings = runtime.settings
    deps = api_deps(runtime)
    deps.limits = Limits(parts.limits, per_user=settings.rate_limit_enable_per_user)
    app = create_public_app(deps, runtime.readiness, max_body=settings.max_request_body_bytes)
    layers: list[Callable[[Any], Any]] = [
        functools.partial(MetricsMiddleware, listener="public"),
        functools.partial(AccessLogMiddleware, writer=parts.access_log, listener="public"),
        functools.partial(
            IdempotencyMiddleware,
            store=parts.idempotency,
            tokens=runtime.tokens,
            listener="public",
            audience=PUBLIC,
            max_body=settings.max_request_body_bytes,
        ),
    ]
    return traced(wrap(app, edge_config(settings), layers), listener="public")


def admin_listener_app(runtime: Runtime, parts: HttpParts) -> Any:
    """The admin listener: edge middleware → access log → idempotency → Litestar (routes in api/admin)."""
    from api.admin.app import create_admin_app
    from api.admin.routes import admin_routes

    settings = runtime.settings
    deps = api_deps(runtime, audience=ADMIN)
    deps.limits = Limits(
        RequestLimits(parts.limits.limiter, parts.limits.table, bucket="admin|"),
        per_user=settings.rate_limit_enable_per_user,
    )
    app = create_admin_app(deps, runtime.readiness, max_body=settings.max_request_body_bytes, routes=admin_routes())
    layers: list[Callable[[Any], Any]] = [
        functools.partial(MetricsMiddleware, listener="admin"),
        functools.partial(AccessLogMiddleware, writer=parts.access_log, listener="admin"),
        functools.partial(
            IdempotencyMiddleware,
            store=parts.idempotency,
            tokens=runtime.tokens,
            listener="admin",
            audience=ADMIN,
            max_body=settings.max_request_body_bytes,
        ),
    ]
    origins = settings.admin_cors_allowed_origins
    edge = EdgeConfig(settings.trusted_proxies, frozenset(o for o in origins if o != "*"), "*" in origins)
    return traced(wrap(app, edge, layers), listener="admin")


async def _start_workers(settings: Settings, runtime: Runtime, roles: frozenset[str]) -> HttpWorkers:
    """The other worker processes of the shared listeners; a SIGHUP to this process reaches them too."""
    workers = HttpWorkers(settings, roles)
    await workers.start()
    refresher = runtime.refresher
    if refresher is not None and refresher.handles_sighup:  # the children build the same refresher
        refresher.on_sighup = functools.partial(workers.send, signal.SIGHUP)
    return workers


async def _serve(settings: Settings, store: EventStore, roles: frozenset[str], worker: bool) -> int:
    public_socket = rpc_socket = None
    if "public" in roles:
        public_socket = bind(settings.server_host, settings.server_port, joining=worker)
    if "rpc" in roles:
        rpc_socket = bind(settings.server_host, settings.grpc_port, joining=worker)
    # The admin listener has /metrics; a process without it may open METRICS_PORT (a worker's counts are the parent's).
    stop_metrics = metrics_endpoint(settings) if "admin" not in roles and not worker else (lambda: None)
    runtime: Runtime = await build_runtime(settings, store)
    parts = HttpParts.start(runtime, cleanup_job="cleanup" in roles)
    supervisor = Supervisor(projection_deps(settings, store), NAMES if "projectors" in roles else ())
    supervisor.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    listeners: list[tuple[_Server, list[socket.socket] | None]] = []
    workers = None
    if public_socket is not None:
        public = _listener(public_app(runtime, parts), settings.server_host, settings.server_port, settings)
        listeners.append((public, [public_socket]))
    if "admin" in roles:
        app = admin_listener_app(runtime, parts)
        listeners.append((_listener(app, settings.admin_host, settings.admin_port, settings), None))
    rpc = None
    if rpc_socket is not None:
        rpc = await start_rpc(runtime, rpc_socket, parts.access_log, parts.idempotency)
    if not worker and settings.http_workers > 1 and roles & SHARED_ROLES:
        workers = await _start_workers(settings, runtime, roles)
    tasks = [asyncio.create_task(server.serve(sockets=sockets)) for server, sockets in listeners]
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        runtime.readiness.shutting_down = True
        logger.info("shutting down")
        for server, _ in listeners:
            server.should_exit = True
        # The workers drain their requests while this process drains its own.
        results = await asyncio.gather(*tasks, *([workers.stop()] if workers else []), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed or not stop.is_set():
            raise Fatal(1, "error: a listener could not start or stopped unexpectedly (see the log)")
    finally:
        stopper.cancel()
        stop_metrics()
        if workers is not None:
            await workers.stop()
        if rpc is not None:
            await rpc.close()
        await asyncio.to_thread(supervisor.stop, settings.shutdown_timeout)
        await parts.close()
        await runtime.close()
    logger.info("stopped")
    return 0

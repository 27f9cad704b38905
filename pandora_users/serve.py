"""`pandora-users serve`: every listener and worker in one process, until SIGINT/SIGTERM.

Shutdown (SPEC §11): readiness turns not-ready at once, the listeners stop accepting and let in-flight
requests finish for up to SHUTDOWN_TIMEOUT, pools close, and the embedded servers this process started stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn
from loguru import logger

from api.app import create_public_app
from pandora_users.bootstrap import (
    Runtime,
    build_runtime,
    database_url,
    ensure_schema,
    open_store,
    wait_for_postgres,
    with_dependencies,
)
from pandora_users.config.settings import Settings, settings_from_env
from pandora_users.fatal import Fatal
from pandora_users.infra.embedded import EmbeddedServers
from pandora_users.logs import configure
from pandora_users.store.app import EventStore


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us (several servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve() -> int:
    settings = settings_from_env()
    configure(level=settings.log_level, fmt=settings.log_format, env=settings.app_env)
    for variable, message in settings.warnings:
        logger.warning("configuration: {}: {}", variable, message)
    servers = EmbeddedServers(settings.data_dir)
    try:
        settings = with_dependencies(settings, servers)
        wait_for_postgres(database_url(settings))
        store = open_store(settings)
        try:
            ensure_schema(settings, store, migrate=settings.auto_migrate)
            return asyncio.run(_serve(settings, store))
        finally:
            store.close()
    finally:
        servers.stop()


def _listener(app: Any, host: str, port: int, settings: Settings) -> _Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout) or 1,
        h11_max_incomplete_event_size=16 * 1024,
    )
    return _Server(config)


async def _serve(settings: Settings, store: EventStore) -> int:
    runtime: Runtime = await build_runtime(settings, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    public = _listener(create_public_app(runtime.readiness), settings.server_host, settings.server_port, settings)
    listeners = [public]
    tasks = [asyncio.create_task(server.serve()) for server in listeners]
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        runtime.readiness.shutting_down = True
        logger.info("shutting down")
        for server in listeners:
            server.should_exit = True
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed or not stop.is_set():
            raise Fatal(1, "error: a listener could not start or stopped unexpectedly (see the log)")
    finally:
        stopper.cancel()
        await runtime.close()
    logger.info("stopped")
    return 0

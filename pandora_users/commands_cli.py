"""CLI commands other than serve: migrate, create-admin, project (they start or reuse embedded servers in dev)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pandora_users.bootstrap import (
    build_runtime,
    database_url,
    ensure_schema,
    open_store,
    projection_deps,
    redis_url,
    require_redis,
    wait_for_postgres,
    with_dependencies,
)
from pandora_users.commands import registration
from pandora_users.config.settings import Settings, settings_from_env
from pandora_users.domain.context import Context
from pandora_users.domain.errors import DomainError, UserAlreadyExists, UserNotFound, WeakPassword
from pandora_users.fatal import Fatal
from pandora_users.infra.embedded import EmbeddedServers
from pandora_users.logs import configure
from pandora_users.store.app import EventStore
from projections.registry import NAMES, Supervisor


@contextmanager
def prepared() -> Iterator[tuple[Settings, EventStore]]:
    settings = settings_from_env()
    configure(level=settings.log_level, fmt=settings.log_format, env=settings.app_env)
    servers = EmbeddedServers(settings.data_dir)
    try:
        settings = with_dependencies(settings, servers)
        wait_for_postgres(database_url(settings))
        store = open_store(settings)
        try:
            yield settings, store
        finally:
            store.close()
    finally:
        servers.stop()


def migrate(*, check: bool) -> int:
    with prepared() as (settings, store):
        ensure_schema(settings, store, migrate=not check)
    return 0


async def create_admin(
    *, email: str, first_name: str, last_name: str, promote: bool, password_source: Callable[[], str]
) -> int:
    with prepared() as (settings, store):
        ensure_schema(settings, store, migrate=settings.auto_migrate)
        runtime = await build_runtime(settings, store)
        try:
            created = await registration.create_admin(
                runtime.write,
                email=email,
                password=password_source,
                first_name=first_name,
                last_name=last_name,
                promote=promote,
                ctx=Context(metadata={"actor_id": "cli", "actor_role": "admin"}),
            )
        except UserAlreadyExists as exc:
            raise Fatal(7, "error: a user with this email already exists (use --promote)") from exc
        except UserNotFound as exc:
            raise Fatal(6, "error: user not found") from exc
        except WeakPassword as exc:
            reasons = ", ".join(d.message for d in exc.details)
            raise Fatal(2, f"error: password does not meet the policy: {reasons}") from exc
        except DomainError as exc:
            raise Fatal(2, f"error: {exc.message}") from exc
        finally:
            await runtime.close()
    verb = "promoted to admin" if created.promoted else "admin created"
    print(f"{verb}: {created.user_id}")
    return 0


def project(names: list[str]) -> int:
    """`pandora-users project <name|all>`: run projectors until SIGINT/SIGTERM (standby if another is active)."""
    chosen = list(NAMES) if names == ["all"] else names
    unknown = [n for n in chosen if n not in NAMES]
    if unknown:
        raise Fatal(2, f"error: unknown projection {unknown[0]!r} (expected {', '.join(NAMES)} or all)")
    with prepared() as (settings, store):
        ensure_schema(settings, store, migrate=settings.auto_migrate)
        if {"revocations", "forwarder"} & set(chosen):
            require_redis(redis_url(settings))
        supervisor = Supervisor(projection_deps(settings, store), chosen)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        supervisor.start()
        stop.wait()
        supervisor.stop(settings.shutdown_timeout)
    return 0

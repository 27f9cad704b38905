"""CLI commands other than serve and the auditor's (audit_cli): migrate, create-admin, project, rebuild,
audit-cleanup (they start or reuse embedded servers in dev)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pandora_users.bootstrap import (
    build_runtime,
    crypto_keys,
    database_url,
    ensure_schema,
    metrics_endpoint,
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
from pandora_users.observability import tracing
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
        tracing.setup(settings)
        stop_metrics = metrics_endpoint(settings)
        try:
            supervisor = Supervisor(projection_deps(settings, store), chosen)
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            supervisor.start()
            stop.wait()
            supervisor.stop(settings.shutdown_timeout)
        finally:
            stop_metrics()
            tracing.shutdown(settings.shutdown_timeout)  # flush the spans still queued (SPEC §11)
    return 0


def rebuild(names: list[str]) -> int:
    """`pandora-users rebuild <users|event_log|all>`: rebuild beside the live table, then swap."""
    from projections.rebuild import rebuild_all
    from projections.registry import READ_MODELS

    chosen = list(READ_MODELS) if names == ["all"] else names
    bad = [n for n in chosen if n not in READ_MODELS]
    if bad:
        delivery = bad[0] in NAMES
        why = "is a delivery process and cannot be rebuilt" if delivery else "is not a read model"
        raise Fatal(2, f"error: {bad[0]!r} {why} (expected users, event_log or all)")
    with prepared() as (settings, store):
        ensure_schema(settings, store, migrate=settings.auto_migrate)
        reports = rebuild_all(store, database_url(settings), chosen, kek=crypto_keys(settings)["data_encryption_key"])
    for report in reports:
        print(
            f"{report.name}: {report.events} events in {report.seconds:.1f} s "
            f"({report.events_per_second:.0f} events/s), now serving {report.new_table} at position {report.position}"
        )
    return 0


async def audit_cleanup(*, dry_run: bool) -> int:
    """`pandora-users audit-cleanup [--dry-run]`: the maintenance job of SPEC §9.4, once."""
    import asyncpg

    from pandora_users.audit.cleanup import run_cleanup

    with prepared() as (settings, store):
        ensure_schema(settings, store, migrate=settings.auto_migrate)
        pool = await asyncpg.create_pool(database_url(settings), min_size=1, max_size=2)
        try:
            report = await run_cleanup(
                pool,
                batch_size=settings.audit_cleanup_batch_size,
                session_record_retention=settings.session_record_retention,
                dry_run=dry_run,
            )
        finally:
            await pool.close()
    if report.skipped:
        print("audit-cleanup: another replica is running it; nothing done")
        return 0
    verb = "would delete" if dry_run else "deleted"
    print(
        f"audit-cleanup {verb}: {report.access_log} access-log rows, {report.sessions} session records, "
        f"{report.link_tokens} link tokens ({report.duration:.1f} s)"
    )
    return 0

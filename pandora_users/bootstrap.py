"""The composition root: builds every part from `Settings` once and hands it down.

Nothing here runs at import. Failures that end the process carry their exit code (SPEC §10.4, §11).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import psycopg
from loguru import logger

from pandora_users.commands.base import WriteConfig, WriteSide
from pandora_users.config.dev_secrets import ensure_dev_secrets
from pandora_users.config.refresher import SecretsRefresher
from pandora_users.config.secret import Secret
from pandora_users.config.settings import Settings
from pandora_users.fatal import Fatal
from pandora_users.infra.embedded import EmbeddedServers
from pandora_users.security.hashing import PasswordHasher
from pandora_users.security.keys import (
    KeyMaterialError,
    KeyRing,
    KeySet,
    generate_dev_key,
    hs256_keyset,
    load_eddsa_keys_dir,
    load_eddsa_mapping,
    load_eddsa_pem,
)
from pandora_users.security.passwords import Blocklist
from pandora_users.security.tokens import TokenService
from pandora_users.store import migrate as migrations
from pandora_users.store.app import EventStore, postgres_env
from projections.registry import ProjectionDeps

if TYPE_CHECKING:
    import asyncpg
    from redis.asyncio import Redis

    from api.system import Readiness
    from projections.queries.user_rows import UserRows

DB_WAIT = 30.0


def with_dependencies(settings: Settings, servers: EmbeddedServers | None) -> Settings:
    """Start or reuse embedded servers where nothing is configured (dev/test), and dev secrets."""
    if servers is not None and (settings.embedded_postgres or settings.embedded_redis):
        urls = servers.start(need_postgres=settings.embedded_postgres, need_redis=settings.embedded_redis)
        settings = msgspec.structs.replace(
            settings,
            resolved_database_url=Secret(urls["DATABASE_URL"])
            if "DATABASE_URL" in urls
            else settings.resolved_database_url,
            resolved_redis_url=Secret(urls["REDIS_URL"]) if "REDIS_URL" in urls else settings.resolved_redis_url,
        )
    return ensure_dev_secrets(settings)


def metrics_endpoint(settings: Settings) -> Callable[[], None]:
    """`/metrics` on METRICS_PORT when it is set (processes without the admin listener); its stop function."""
    if settings.metrics_port is None:
        return lambda: None
    from pandora_users.observability.metrics import serve_metrics

    host, port = settings.admin_host, settings.metrics_port
    try:
        return serve_metrics(host, port)
    except OSError as exc:
        raise Fatal(1, f"error: cannot listen on {host}:{port}: {exc.strerror}") from None


def database_url(settings: Settings) -> str:
    if settings.resolved_database_url is None:
        raise Fatal(3, "configuration error: DATABASE_URL: no database configured")
    return settings.resolved_database_url.get()


def redis_url(settings: Settings) -> str:
    if settings.resolved_redis_url is not None:
        return settings.resolved_redis_url.get()
    return f"redis://{settings.redis_host}:{settings.redis_port}/{settings.redis_db}"


def require_redis(url: str, timeout: float = 10.0) -> None:
    """For commands that cannot work without Redis (project forwarder/revocations): exit 4 when unreachable."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except redis.RedisError as exc:
                if time.monotonic() >= deadline:
                    raise Fatal(4, f"error: Redis unreachable: {exc}") from exc
                time.sleep(0.5)
    finally:
        client.close()


def crypto_keys(settings: Settings) -> dict[str, bytes]:
    if settings.data_encryption_key is None or settings.email_index_key is None:
        raise Fatal(3, "configuration error: DATA_ENCRYPTION_KEY: missing")
    return {
        "data_encryption_key": settings.data_encryption_key.get(),
        "email_index_key": settings.email_index_key.get().encode(),
    }


def wait_for_postgres(url: str, timeout: float = DB_WAIT) -> None:
    """PostgreSQL unreachable for `timeout` seconds at start-up ends the process with exit code 4."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                raise Fatal(4, f"error: PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}") from exc
            time.sleep(0.5)


def open_store(settings: Settings, *, serving: bool = False) -> EventStore:
    """The event store; a serving process's statements are cut at DB_STATEMENT_TIMEOUT (503 to the caller)."""
    env = postgres_env(
        database_url(settings),
        pool_size=settings.db_pool_min,
        max_overflow=settings.db_pool_max - settings.db_pool_min,
        lock_timeout=settings.db_lock_timeout,
        statement_timeout=settings.db_statement_timeout if serving else None,
    )
    store = EventStore(env, crypto_keys(settings)["data_encryption_key"])
    store.listen_for_key_destruction(database_url(settings))
    return store


def ensure_schema(settings: Settings, store: EventStore, *, migrate: bool) -> None:
    url, keys = database_url(settings), crypto_keys(settings)
    try:
        if migrate:
            applied = migrations.migrate(url, store, keys)
            if applied:
                logger.info("applied migrations {}", applied)
        migrations.check(url, keys)
    except migrations.SchemaOutdated as exc:
        raise Fatal(5, 'error: database schema is not up to date: run "pandora-users migrate"') from exc
    except migrations.KeyMismatch as exc:
        raise Fatal(3, f"configuration error: {exc}") from exc


def signing_keys(settings: Settings) -> KeySet:
    """The signing keys, in SPEC §6.2's order of precedence; bad key material is a configuration error."""
    try:
        if settings.jwt_algorithm == "HS256":
            if settings.jwt_secret is None:
                raise KeyMaterialError("JWT_SECRET is required with HS256")
            return hs256_keyset(settings.jwt_secret.get(), settings.jwt_kid or "static-v1")
        if settings.vault_signing_keys:
            mapping = {kid: pem.get() for kid, pem in settings.vault_signing_keys.items()}
            return load_eddsa_mapping(mapping, settings.vault_active_kid)
        if settings.jwt_keys_dir is not None:
            return load_eddsa_keys_dir(settings.jwt_keys_dir)
        if settings.jwt_private_key is not None:
            return load_eddsa_pem(settings.jwt_private_key.get(), settings.jwt_kid)
        if settings.app_env in ("dev", "test"):
            return generate_dev_key(settings.data_dir)
        raise KeyMaterialError("no signing key configured")
    except KeyMaterialError as exc:
        raise Fatal(3, f"configuration error: JWT_PRIVATE_KEY: {exc}") from exc


def projection_deps(settings: Settings, store: EventStore) -> ProjectionDeps:
    return ProjectionDeps(
        store=store,
        conninfo=database_url(settings),
        redis_url=redis_url(settings),
        redis_key_prefix=settings.redis_key_prefix,
        events_stream=settings.events_stream,
        events_stream_maxlen=settings.events_stream_maxlen,
        access_token_ttl=settings.jwt_access_token_expiry,
        batch_size=settings.projection_batch_size,
    )


def write_config(settings: Settings) -> WriteConfig:
    return WriteConfig(
        refresh_ttl=settings.jwt_refresh_token_expiry,
        session_max_per_user=settings.session_max_per_user,
        session_idle_timeout=settings.session_idle_timeout,
        email_verification_token_ttl=settings.email_verification_token_ttl,
        password_reset_token_ttl=settings.password_reset_token_ttl,
        email_verification_url=settings.email_verification_url,
        password_reset_url=settings.password_reset_url,
        email_verification_required=settings.email_verification_required,
        password_min_length=settings.password_min_length,
        password_max_length=settings.password_max_length,
        lockout_threshold=settings.lockout_threshold,
        lockout_duration=settings.lockout_duration,
    )


@dataclass
class Runtime:
    """Everything a running process holds; `close()` releases it in reverse order."""

    settings: Settings
    store: EventStore
    write: WriteSide
    hasher: PasswordHasher
    tokens: TokenService
    db: asyncpg.Pool
    redis: Redis
    readiness: Readiness
    users: UserRows  # users read-model rows kept in this process
    refresher: SecretsRefresher | None = None  # key rotation and Vault token renewal (SPEC §6.2, §10.3)

    async def close(self) -> None:
        self.readiness.shutting_down = True
        if self.refresher is not None:
            await self.refresher.stop()
        await self.users.close()
        await self.redis.aclose()
        await self.db.close()
        self.write.close()
        self.hasher.close()
        await asyncio.to_thread(self.store.close)


async def keep_session(conn: asyncpg.Connection) -> None:
    """A released connection skips asyncpg's reset query (RESET ALL, UNLISTEN *, advisory unlock...), a
    round trip per request: no pooled connection sets session state, listens or takes a session lock (LISTEN
    and advisory locks use their own connections). asyncpg still rolls back an open transaction first."""


async def build_runtime(settings: Settings, store: EventStore) -> Runtime:
    import asyncpg
    from redis.asyncio import Redis  # the HTTP/Redis stack loads only in processes that serve

    from api.system import Readiness
    from pandora_users.infra.read_pool import create_read_pool
    from projections.queries.user_rows import UserRows

    hasher = PasswordHasher.from_settings(settings)
    await hasher.start()
    blocklist = await asyncio.to_thread(Blocklist.load, settings.password_blocklist_file)
    pepper = crypto_keys(settings)["email_index_key"]
    write = WriteSide(
        store=store,
        pepper=pepper,
        hasher=hasher,
        blocklist=blocklist,
        config=write_config(settings),
        executor=ThreadPoolExecutor(settings.db_pool_max, thread_name_prefix="write"),
    )
    keyring = KeyRing(signing_keys(settings))
    tokens = TokenService(keyring, settings.jwt_issuer, settings.jwt_access_token_expiry)
    db = await create_read_pool(
        database_url(settings),
        min_size=1,
        max_size=settings.db_pool_max,
        statement_timeout=settings.db_statement_timeout,
        reset=keep_session,
    )
    write.pool = db
    redis = Redis.from_url(redis_url(settings), socket_connect_timeout=1, socket_timeout=1)
    from projections.status import projection_lags

    readiness = Readiness(
        postgres=lambda: db.fetchval("SELECT 1"),
        redis=redis.ping,
        lags=lambda: projection_lags(db),
        max_lag=settings.ready_max_projection_lag,
    )
    # Every process that signs or verifies tokens (serve, api, admin, rpc) builds its Runtime here.
    refresher = await asyncio.to_thread(SecretsRefresher.for_settings, settings, keyring, os.environ)
    if refresher is not None:
        refresher.start()
    users = UserRows(db, functools.partial(asyncpg.connect, database_url(settings)))
    users.start()
    return Runtime(settings, store, write, hasher, tokens, db, redis, readiness, users, refresher)

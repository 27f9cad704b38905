"""Shared fixtures: real PostgreSQL and Redis (DATABASE_URL / REDIS_URL, else embedded servers).

Each test that needs the database gets its own database, cloned from a migrated template, so no test
depends on another's data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pandora_users.infra.embedded import EmbeddedServers

if TYPE_CHECKING:
    from pandora_users.commands.base import WriteSide
    from pandora_users.store.app import EventStore

TEST_KEK = bytes(range(32))
TEST_PEPPER = b"pandora-users test email index pepper"


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture(scope="session")
def embedded() -> Iterator[EmbeddedServers]:
    # Its own directory, not pytest's tmp tree, which a concurrent pytest run may prune.
    directory = Path(tempfile.mkdtemp(prefix="pandora-embedded-"))
    servers = EmbeddedServers(directory)
    yield servers
    servers.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def server_url(request: pytest.FixtureRequest) -> str:
    """A URL of the PostgreSQL server the tests use (its database is only used to create others)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    servers: EmbeddedServers = request.getfixturevalue("embedded")
    if servers.postgres is None:
        servers.urls.update(servers.start(need_postgres=True, need_redis=False))
    return servers.urls["DATABASE_URL"]


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    servers: EmbeddedServers = request.getfixturevalue("embedded")
    if servers.valkey is None:
        servers.urls.update(servers.start(need_postgres=False, need_redis=True))
    return servers.urls["REDIS_URL"]


def _admin(server_url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(server_url, autocommit=True)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """A migrated database that every test database is cloned from."""
    from pandora_users.store.app import EventStore, postgres_env
    from pandora_users.store.migrate import migrate

    name = f"pandora_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_db(server_url, name)
    store = EventStore(postgres_env(url, pool_size=1, max_overflow=0, lock_timeout=5), TEST_KEK)
    try:
        migrate(url, store, {"data_encryption_key": TEST_KEK, "email_index_key": TEST_PEPPER})
    finally:
        store.close()
    yield name
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(server_url: str, template_db: str) -> Iterator[str]:
    name = f"pandora_t_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _with_db(server_url, name)
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def event_store(database_url: str) -> Iterator[EventStore]:
    from pandora_users.store.app import EventStore, postgres_env

    store = EventStore(postgres_env(database_url, pool_size=4, max_overflow=16, lock_timeout=5), TEST_KEK)
    yield store
    store.close()


def make_write_side(store: EventStore, **config: Any) -> WriteSide:
    """Commands over `store` with cheap Argon2 parameters; close with `w.close(); w.hasher.close()`."""
    from pandora_users.commands.base import WriteConfig, WriteSide
    from pandora_users.security.hashing import Argon2Params, PasswordHasher
    from pandora_users.security.passwords import Blocklist

    hasher = PasswordHasher(
        Argon2Params(memory_kib=8192, time_cost=1, parallelism=1, hash_length=32, salt_length=16),
        max_concurrency=2,
        queue_size=64,
        queue_timeout=10.0,
    )
    options: dict[str, Any] = {"lockout_threshold": 3, "session_max_per_user": 5, **config}
    blocklist = Blocklist.bundled()
    return WriteSide(store=store, pepper=TEST_PEPPER, hasher=hasher, blocklist=blocklist, config=WriteConfig(**options))


@pytest.fixture
async def write_side(event_store: EventStore, database_url: str) -> AsyncIterator[WriteSide]:
    import asyncpg

    w = make_write_side(event_store)
    async with asyncpg.create_pool(database_url, min_size=1, max_size=4) as pool:
        w.pool = pool
        yield w
    w.close()
    w.hasher.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"

"""A real `pandora-users serve` process shared by the end-to-end API tests of a session."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.e2e.procs import Service, clean_env, free_port

_ips = itertools.count(1)
SERVICE_TOKEN = "wallet-service-token-0123456789abcdef0123"
KYC_TOKEN = "kyc-adapter-token-0123456789abcdef012345"


@dataclass
class Api:
    """The running service, with a fresh client IP per caller (X-Forwarded-For from a trusted proxy)."""

    service: Service
    database_url: str
    redis_url: str
    stream: str
    prefix: str
    env: dict[str, str]  # the service's environment, for CLI commands against it

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def admin_url(self) -> str:
        return self.service.admin_url

    @property
    def grpc_target(self) -> str:
        return self.service.grpc_target

    def client(self, ip: str | None = None) -> httpx.Client:
        n = next(_ips)
        address = ip or f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        return httpx.Client(
            base_url=self.url, headers={"X-Forwarded-For": address, "User-Agent": "e2e-tests"}, timeout=30
        )


@contextlib.contextmanager
def spawn_service(
    server_url: str, template_db: str, redis_url: str, workdir: Path, command: str = "serve", **overrides: str
) -> Iterator[Api]:
    """A `pandora-users serve` (or `api`...) process on a fresh database of its own (dropped after), ready."""
    name = f"pandora_e2e_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    database_url = server_url.rsplit("/", 1)[0] + "/" + name
    run = uuid.uuid4().hex[:8]
    stream, prefix = f"e2e-{run}:events", f"e2e-{run}:"
    env = clean_env(
        APP_ENV="test",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=prefix,
        EVENTS_STREAM=stream,
        DATA_DIR=str(workdir / "data"),
        TRUSTED_PROXIES="127.0.0.1/32,::1/128",
        ARGON2_MEMORY_KIB="8192",
        ARGON2_PARALLELISM="1",
        SERVICE_TOKENS=f"wallet:{SERVICE_TOKEN},kyc-adapter:{KYC_TOKEN}:UpdateKYCStatus|GetUser",
        LOCKOUT_THRESHOLD="3",  # below the login-email limit (5), so the lock answers before a 429
        LOG_LEVEL="info",
        DATA_ENCRYPTION_KEY="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        EMAIL_INDEX_KEY="pandora-users test email index pepper",
        **overrides,
    )
    service = Service(env, workdir, free_port(), command)
    try:
        if command == "rpc":
            service.wait_grpc_serving(timeout=60)
        else:
            service.wait_ready(timeout=60)
        yield Api(service, database_url, redis_url, stream, prefix, env)
    finally:
        service.stop()
        redis.Redis.from_url(redis_url).delete(stream)
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def api(server_url: str, template_db: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with spawn_service(server_url, template_db, redis_url, tmp_path_factory.mktemp("api")) as running:
        yield running

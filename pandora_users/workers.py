"""HTTP_WORKERS: the public HTTP listener and the gRPC listener served by several processes, each on its port.

The process running `serve`, `api` or `rpc` binds those ports, serves them itself, and starts HTTP_WORKERS − 1
children (`python -m pandora_users.workers`) that run the same two listeners only (never the admin listener,
the projectors or the retention job; those stay in the parent). Every process binds its own socket per port with
SO_REUSEPORT, so the kernel hands each new connection to one of them by a hash of its addresses: many
connections spread evenly, a handful may not (8/4 of 12 is common). A shared accept queue was worse: the process
that is already awake accepts a whole burst of connections, keep-alive pins them there, and the others idle.

A child dies with its parent (PR_SET_PDEATHSIG, and it checks the parent once more after arming it), and a child
that exits while the parent is running is restarted after a pause. On shutdown the parent passes SIGTERM on, so
each worker drains its in-flight requests for up to SHUTDOWN_TIMEOUT like the parent does.

Counters and histograms of every worker land in the shared PROMETHEUS_MULTIPROC_DIR (see
`observability.multiproc`), so `/metrics` on the admin listener reports their sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys

from loguru import logger

from pandora_users.bootstrap import database_url, redis_url
from pandora_users.config.settings import Settings
from pandora_users.fatal import Fatal

PARENT_ENV = "PANDORA_HTTP_WORKER_PARENT"
ROLES_ENV = "PANDORA_HTTP_WORKER_ROLES"
# The listeners worker children may share with their parent (the rest run once, in the parent).
SHARED_ROLES = frozenset({"public", "rpc"})
RESTART_PAUSE = 1.0
_PR_SET_PDEATHSIG = 1


def is_worker() -> bool:
    """True in a worker child (which then dies with its parent)."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None:
        return False
    _die_with_parent(int(parent))
    return True


def bind(host: str, port: int, *, joining: bool = False, backlog: int = 2048) -> socket.socket:
    """A listening socket on a port the workers share, which they join (exit 1 when the port is taken).

    The parent first binds without SO_REUSEPORT: that fails when anything, including another instance of this
    service, already listens there, so a second instance cannot silently join the group.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if not joining:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise Fatal(1, f"error: cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _worker_env(settings: Settings) -> dict[str, str]:
    """What a child needs beyond the parent's environment: the embedded servers the parent started."""
    env = {}
    if settings.embedded_postgres:
        env["DATABASE_URL"] = database_url(settings)
    if settings.embedded_redis:
        env["REDIS_URL"] = redis_url(settings)
    return env


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


class HttpWorkers:
    """The parent's side: start, watch and stop the worker children serving `roles` (of SHARED_ROLES)."""

    def __init__(self, settings: Settings, roles: frozenset[str]) -> None:
        self._count = settings.http_workers - 1
        self._timeout = settings.shutdown_timeout
        self._roles = roles & SHARED_ROLES
        self._env = {**_worker_env(settings), ROLES_ENV: ",".join(sorted(self._roles))}
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs.values() if proc.returncode is None]

    async def start(self) -> None:
        for slot in range(self._count):
            await self._spawn(slot)
            self._watchers.append(asyncio.create_task(self._watch(slot)))
        if self._count:
            logger.info("{}: {} worker processes besides this one", " and ".join(sorted(self._roles)), self._count)

    def send(self, sig: signal.Signals) -> None:
        """Pass a signal on to every live child (SIGHUP: refresh secrets now, as this process does)."""
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def _spawn(self, slot: int) -> None:
        env = {**os.environ, **self._env, PARENT_ENV: str(os.getpid())}
        self._procs[slot] = await asyncio.create_subprocess_exec(sys.executable, "-m", "pandora_users.workers", env=env)

    async def _watch(self, slot: int) -> None:
        while True:
            proc = self._procs[slot]
            code = await proc.wait()
            _mark_dead(proc.pid)
            if self._stopping:
                return
            self.restarts += 1
            logger.error("worker process {} exited with status {}; restarting it", proc.pid, code)
            await asyncio.sleep(RESTART_PAUSE)
            if self._stopping:
                return
            await self._spawn(slot)

    async def stop(self) -> None:
        """SIGTERM every child, wait for them to drain, SIGKILL what is left after the grace period."""
        self._stopping = True
        live = [proc for proc in self._procs.values() if proc.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(proc.wait()) for proc in live]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self._timeout + 5)
            for proc in live:
                if proc.returncode is None:
                    logger.error("worker process {} did not stop in time; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending)
        for watcher in self._watchers:
            watcher.cancel()
        for proc in live:
            _mark_dead(proc.pid)


def _mark_dead(pid: int) -> None:
    """Drop a finished process's live gauges from the shared metrics directory (its counters stay counted)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def worker_roles() -> frozenset[str]:
    """The listeners this worker child serves, as its parent asked (never more than SHARED_ROLES)."""
    return frozenset(os.environ[ROLES_ENV].split(",")) & SHARED_ROLES


def main() -> int:
    """A worker child: the public and/or gRPC listener, as its parent runs them."""
    # The parent passes SIGHUP on once its own refresher handles it; until this child's refresher does (or if
    # this child has none), SIGHUP must not end it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from pandora_users.cli import run_guarded
    from pandora_users.serve import serve

    return run_guarded(lambda: serve(worker_roles()))


if __name__ == "__main__":
    sys.exit(main())

"""The references the service is measured against, in the same run on the same machine.

- Bare Argon2id verify: argon2-cffi with the service's parameters in a pool of ARGON2_MAX_CONCURRENCY threads
  per HTTP worker (what login and register are compared to), and the time of one verify alone. Beside it, for
  information, the same with the service's own hasher (`pandora_users.security.argon2_memory`: the same
  libargon2 on memory each thread keeps), which is what login and register can do at best.
- Bare Litestar: bench/bare_app.py under uvicorn (uvloop, httptools) and under granian, with the service's
  worker count, loaded by the same wrk as the service.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import argon2
import httpx
from seeding import PASSWORD

from pandora_users.config.settings import Settings
from pandora_users.security import argon2_memory

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def argon2_verify(settings: Settings, seconds: float, *, kept_memory: bool = False) -> dict[str, Any]:
    """Verify throughput of ARGON2_MAX_CONCURRENCY threads, and the latency of one verify with no contention:
    argon2-cffi's `verify`, or (`kept_memory`) the service hasher's verification of its usual case."""
    hasher = argon2.PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        hash_len=settings.argon2_hash_length,
        salt_len=settings.argon2_salt_length,
        type=argon2.Type.ID,
    )
    stored = hasher.hash(PASSWORD)
    decoded = argon2_memory.decode(stored)
    assert decoded is not None

    def verify() -> None:
        if kept_memory:
            assert argon2_memory.matches(decoded, PASSWORD.encode())
        else:
            hasher.verify(stored, PASSWORD)

    alone = []
    for _ in range(7):
        started = time.perf_counter()
        verify()
        alone.append(time.perf_counter() - started)
    # Every HTTP worker process has its own pool of ARGON2_MAX_CONCURRENCY slots: the service's whole pool.
    workers = getattr(settings, "http_workers", 1)
    threads = settings.argon2_max_concurrency * workers
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        mine = []
        while (started := time.perf_counter()) < stop_at:
            verify()
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(worker)
    elapsed = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [latencies[0]] * 99
    return {
        "params": {
            "memory_kib": settings.argon2_memory_kib,
            "time_cost": settings.argon2_time_cost,
            "parallelism": settings.argon2_parallelism,
        },
        "threads": threads,
        "argon2_max_concurrency": settings.argon2_max_concurrency,
        "http_workers": workers,
        "verifies": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "one_verify_ms": statistics.median(alone) * 1000,
    }


def server_command(server: str, port: int, workers: int) -> list[str]:
    if server == "uvicorn":
        return [
            str(BIN / "uvicorn"), "bare_app:app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    if server == "granian":
        return [
            str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
            "bare_app:app",
        ]  # fmt: skip
    raise ValueError(server)


class BareServer:
    """bench/bare_app.py under one ASGI server, in its own process group (stopped by that group's id)."""

    def __init__(self, server: str, port: int, workers: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            server_command(server, port, workers),
            cwd=HERE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "LITESTAR_WARN_SYNC_TO_THREAD_WITH_ASYNC": "0"},
        )

    def wait_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bare server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"bare server not up within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # workers left behind, in the process group we created
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()

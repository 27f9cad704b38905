"""Database faults under a running service: every connection to PostgreSQL dies at once (what a restart or a
failover does to it) and the reads, the writes and the projectors go on by themselves with no request failing
for it (README, operations); a statement slower than DB_STATEMENT_TIMEOUT answers 503 (SPEC §10.1)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from rpc.gen import user_pb2 as pb
from rpc.gen.user_pb2_grpc import UserServiceStub
from tests.e2e.conftest import SERVICE_TOKEN, Api, spawn_service
from tests.e2e.test_public_api import bearer, register

READERS = 8


@pytest.fixture(scope="module")
def api(server_url: str, template_db: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A service of these tests' own (they kill its connections and lock its tables), without rate limits (the
    readers send a few hundred requests) and with a statement timeout of a second."""
    workdir = tmp_path_factory.mktemp("db-faults")
    overrides = {"RATE_LIMIT_ENABLED": "false", "DB_STATEMENT_TIMEOUT": "1s"}
    with spawn_service(server_url, template_db, redis_url, workdir, **overrides) as running:
        yield running


def _kill_every_backend(server_url: str, database_url: str) -> int:
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def test_no_request_fails_after_every_connection_is_killed(api: Api, server_url: str) -> None:
    with api.client() as c:
        h = bearer(register(c))
        stop = threading.Event()

        def reads() -> list[int]:
            """GET /users/me back to back until told to stop: some are in flight when the connections die."""
            codes = []
            while not stop.is_set():
                codes.append(c.get("/api/v1/users/me", headers=h).status_code)
            return codes

        with concurrent.futures.ThreadPoolExecutor(READERS) as pool:
            readers = [pool.submit(reads) for _ in range(READERS)]
            time.sleep(0.5)  # every reader's pooled connection is open and busy
            killed = _kill_every_backend(server_url, api.database_url)
            time.sleep(1.0)
            stop.set()
            codes = [code for reader in readers for code in reader.result()]
        assert killed >= 4  # the read pool, the write pool and the projectors' connections at least
        assert set(codes) == {200}, sorted(set(codes))
        # A write, then a read that must reflect it: the write side and the projectors reconnected.
        r = c.put("/api/v1/users/me", json={"first_name": "After", "last_name": "Restart"}, headers=h)
        assert r.status_code == 200, r.text
        got = c.get("/api/v1/users/me", headers={**h, "X-Consistency-Token": r.headers["x-consistency-token"]})
        assert got.status_code == 200 and got.json()["first_name"] == "After"
        # The gRPC listener reads through the same pool.
        _kill_every_backend(server_url, api.database_url)
        with grpc.insecure_channel(api.grpc_target) as channel:
            stub = UserServiceStub(channel)  # type: ignore[no-untyped-call]
            reply = stub.GetUser(
                pb.GetUserRequest(user_id=got.json()["id"]),
                metadata=(("authorization", f"Bearer {SERVICE_TOKEN}"),),
                timeout=10,
            )
        assert reply.user.first_name == "After"


def test_a_statement_slower_than_the_timeout_answers_503(api: Api) -> None:
    with api.client() as c:
        h = bearer(register(c))
        sessions = "/api/v1/users/me/sessions"  # always read from PostgreSQL (a users row may be kept in memory)
        assert c.get(sessions, headers=h).status_code == 200
        with psycopg.connect(api.database_url) as blocker:
            blocker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")  # held until this transaction ends
            started = time.monotonic()
            slow = c.get(sessions, headers=h)
            waited = time.monotonic() - started
        assert slow.status_code == 503, slow.text
        assert slow.json()["error"] == "service_unavailable" and slow.headers["retry-after"] == "1"
        assert waited >= 1.0  # cancelled by the timeout, not refused at once
        assert c.get(sessions, headers=h).status_code == 200  # the lock is gone, so is the outage

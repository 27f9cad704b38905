"""Every connection of the service to PostgreSQL dies at once (what a restart or a failover does to it): the
reads, the writes and the projectors go on by themselves, and no request fails for it (README, operations)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import grpc
import psycopg

from rpc.gen import user_pb2 as pb
from rpc.gen.user_pb2_grpc import UserServiceStub
from tests.e2e.conftest import SERVICE_TOKEN, spawn_service
from tests.e2e.test_public_api import bearer, register

READERS = 8


def _kill_every_backend(server_url: str, database_url: str) -> int:
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def test_no_request_fails_after_every_connection_is_killed(
    server_url: str, template_db: str, redis_url: str, tmp_path: Path
) -> None:
    with (
        spawn_service(server_url, template_db, redis_url, tmp_path, RATE_LIMIT_ENABLED="false") as api,
        api.client() as c,
    ):
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

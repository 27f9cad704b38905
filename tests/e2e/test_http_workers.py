"""HTTP_WORKERS: several processes serve the public and gRPC listeners; their metrics add up; they live and die
together."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from prometheus_client.mmap_dict import MmapedDict

from rpc.gen import user_pb2 as pb
from rpc.gen.user_pb2_grpc import UserServiceStub
from tests.e2e.conftest import SERVICE_TOKEN, Api, spawn_service
from tests.e2e.procs import free_port, free_ports, health_check, run_cli
from tests.e2e.test_metrics import _value
from tests.e2e.test_public_api import bearer, register
from tests.integration.test_vault import ed25519_pem

HEALTH = 'pandora_user_service_http_requests_total{listener="public",method="GET",route="/health",status="2xx"}'


@pytest.fixture(scope="module")
def workers_api(
    server_url: str, template_db: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Api, Path]]:
    workdir = tmp_path_factory.mktemp("workers")
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    with spawn_service(
        server_url, template_db, redis_url, workdir, HTTP_WORKERS="3", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    ) as running:
        yield running, metrics_dir


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _workers(api: Api) -> set[int]:
    return {
        pid
        for pid in _children(api.service.proc.pid)
        if b"pandora_users.workers" in Path(f"/proc/{pid}/cmdline").read_bytes()
    }


def _listening(port: int) -> int:
    """How many sockets listen on `port` (each worker process has its own, SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                count += 1
    return count


def _per_process_counts(metrics_dir: Path, *parts: str) -> dict[int, float]:
    """Each process's sum of the counter samples whose key holds every one of `parts`."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        db = MmapedDict(str(path), read_mode=True)
        try:
            for key, value, _ in db.read_all_values():
                if all(part in key for part in parts):
                    counts[pid] = counts.get(pid, 0.0) + value
        finally:
            db.close()
    return counts


def _per_process_health_counts(metrics_dir: Path) -> dict[int, float]:
    return _per_process_counts(metrics_dir, '"/health"', '"2xx"', "http_requests_total")


def _wait_for(predicate: object, timeout: float = 90, log: Path | None = None) -> None:
    """Poll `predicate` (a worker's start-up takes seconds, many more on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time" + (f":\n{log.read_text()[-4000:]}" if log else ""))


def test_the_workers_share_the_load_and_their_counts_add_up(workers_api: tuple[Api, Path]) -> None:
    api, metrics_dir = workers_api
    _wait_for(lambda: _listening(api.service.port) == 3, log=api.service.log)
    before = sum(_per_process_health_counts(metrics_dir).values())

    def burst(_: int) -> int:
        with httpx.Client(base_url=api.url, timeout=30) as client:  # a connection per caller
            return sum(client.get("/health").status_code == 200 for _ in range(20))

    with ThreadPoolExecutor(16) as pool:
        ok = sum(pool.map(burst, range(48)))
    assert ok == 48 * 20

    per_process = _per_process_health_counts(metrics_dir)
    served = {pid: count for pid, count in per_process.items() if count > 0}
    assert len(served) >= 2, per_process  # more than one process took connections
    assert sum(per_process.values()) - before == 48 * 20
    exposed = _value(httpx.get(f"{api.admin_url}/metrics", timeout=10).text, HEALTH)
    assert exposed == sum(per_process.values())  # /metrics reports the sum of every worker's counter


GRPC_HEALTH = ("grpc_requests_total", '"/grpc.health.v1.Health/Check"', '"OK"')


def _health_checks(port: int, calls: int) -> None:
    """`calls` gRPC health checks, each on a new connection (the kernel spreads them over the processes)."""
    for _ in range(calls):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert health_check(channel)(HealthCheckRequest(), timeout=10).status == HealthCheckResponse.SERVING


def test_the_workers_serve_grpc_too(workers_api: tuple[Api, Path]) -> None:
    api, metrics_dir = workers_api
    port = api.service.grpc_port
    _wait_for(lambda: _listening(port) == 3, log=api.service.log)
    before = sum(_per_process_counts(metrics_dir, *GRPC_HEALTH).values())
    _health_checks(port, 30)
    per_process = _per_process_counts(metrics_dir, *GRPC_HEALTH)
    assert sum(per_process.values()) - before == 30
    assert len([pid for pid, count in per_process.items() if count > 0]) >= 2, per_process


def _grpc_first_name(api: Api, user_id: str, token: str | None = None) -> str:
    """GetUser as a service, on a new connection (any process), with a consistency token if given."""
    metadata = [("authorization", f"Bearer {SERVICE_TOKEN}")]
    if token is not None:
        metadata.append(("x-consistency-token", token))
    with grpc.insecure_channel(api.grpc_target) as channel:
        stub = UserServiceStub(channel)  # type: ignore[no-untyped-call]
        return str(stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=metadata, timeout=10).user.first_name)


def test_every_worker_reflects_a_write_over_the_rows_it_keeps(workers_api: tuple[Api, Path]) -> None:
    """Each process keeps users rows in memory (projections/queries/user_rows.py): after a write, the writer's
    next read, on any process, reflects it; so does a read with the write's consistency token; other callers
    see it once the users projector has announced it."""
    api, metrics_dir = workers_api
    _wait_for(lambda: _listening(api.service.port) == 3, log=api.service.log)
    with httpx.Client(base_url=api.url, timeout=30) as client:
        auth = register(client)
    headers, user_id = bearer(auth), auth["user"]["id"]

    def first_names(reads: int) -> set[str]:
        def read(_: int) -> str:
            with httpx.Client(base_url=api.url, timeout=30) as client:  # a new connection: any process
                r = client.get("/api/v1/users/me", headers=headers)
                assert r.status_code == 200, r.text
                return str(r.json()["first_name"])

        with ThreadPoolExecutor(8) as pool:
            return set(pool.map(read, range(reads)))

    assert first_names(10) == {"Ann"}  # the processes now keep the row (the per-user limit is 60 a minute)
    assert {_grpc_first_name(api, user_id) for _ in range(9)} == {"Ann"}
    for name in ("Bea", "Cleo", "Dora"):
        with httpx.Client(base_url=api.url, timeout=30) as client:
            r = client.patch("/api/v1/users/me", json={"first_name": name}, headers=headers)
        assert r.status_code == 200, r.text
        assert first_names(10) == {name}
        token = r.headers["x-consistency-token"]
        assert {_grpc_first_name(api, user_id, token) for _ in range(9)} == {name}
        _wait_for(lambda n=name: {_grpc_first_name(api, user_id) for _ in range(6)} == {n}, timeout=10)  # type: ignore[misc]
    from_memory = _per_process_counts(metrics_dir, "user_row_reads_total", '"memory"')
    assert len([pid for pid, count in from_memory.items() if count > 0]) >= 2, from_memory


def test_a_killed_worker_is_replaced_and_nothing_is_refused(workers_api: tuple[Api, Path]) -> None:
    api, _ = workers_api
    _wait_for(lambda: len(_workers(api)) == 2)
    _wait_for(lambda: _listening(api.service.port) == 3, log=api.service.log)
    victim = min(_workers(api))
    os.kill(victim, signal.SIGKILL)
    with httpx.Client(base_url=api.url, timeout=30) as client:
        statuses = [client.get("/health").status_code for _ in range(50)]
    assert set(statuses) == {200}
    _wait_for(lambda: len(_workers(api)) == 2 and victim not in _workers(api))
    assert "exited with status -9; restarting it" in api.service.log.read_text()


def test_a_worker_dies_with_a_killed_parent(server_url: str, template_db: str, redis_url: str, tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"  # a SIGKILLed parent cannot remove a directory of its own
    metrics.mkdir()
    with spawn_service(
        server_url, template_db, redis_url, tmp_path, HTTP_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(metrics)
    ) as api:
        _wait_for(lambda: len(_workers(api)) == 1)
        children = _workers(api)
        api.service.stop(signal.SIGKILL)
        _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=15)


def test_a_second_instance_cannot_join_the_port(workers_api: tuple[Api, Path], tmp_path: Path) -> None:
    api, _ = workers_api
    admin, grpc_port = free_ports(2)
    ports = {"SERVER_PORT": str(api.service.port), "ADMIN_PORT": str(admin), "GRPC_PORT": str(grpc_port)}
    env = {**api.env, **ports, "DATA_DIR": str(tmp_path / "data")}
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    result = run_cli("serve", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen on 0.0.0.0:{api.service.port}" in result.stderr


def test_stopping_the_parent_stops_every_worker(workers_api: tuple[Api, Path]) -> None:
    api, _ = workers_api  # the last test of this module: it ends the module's service
    children = _workers(api)
    assert len(children) == 2
    assert api.service.stop(signal.SIGTERM) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def test_the_api_role_exposes_its_workers_summed_counts_on_metrics_port(
    server_url: str, template_db: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    with spawn_service(
        server_url, template_db, redis_url, tmp_path, "api", HTTP_WORKERS="2", METRICS_PORT=str(port)
    ) as api:
        _wait_for(lambda: _listening(api.service.port) == 2, log=api.service.log)
        for _ in range(30):
            with httpx.Client(base_url=api.url, timeout=30) as client:  # a new connection each time
                assert client.get("/health").status_code == 200
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert _value(text, HEALTH) == 30  # the sum over both processes
        assert "process_resident_memory_bytes" in text
        assert api.service.stop(signal.SIGTERM) == 0


def test_the_rpc_role_serves_grpc_from_its_workers_and_nothing_else(
    server_url: str, template_db: str, redis_url: str, tmp_path: Path
) -> None:
    port, metrics_dir = free_port(), tmp_path / "metrics"
    metrics_dir.mkdir()
    overrides = {"HTTP_WORKERS": "2", "METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with spawn_service(server_url, template_db, redis_url, tmp_path, "rpc", **overrides) as rpc:
        _wait_for(lambda: _listening(rpc.service.grpc_port) == 2, log=rpc.service.log)
        assert len(_workers(rpc)) == 1
        assert _listening(rpc.service.port) == 0 and _listening(rpc.service.admin_port) == 0  # gRPC only
        _health_checks(rpc.service.grpc_port, 30)
        per_process = _per_process_counts(metrics_dir, *GRPC_HEALTH)
        assert len([pid for pid, count in per_process.items() if count > 0]) == 2, per_process
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        health = _value(text, "pandora_user_service_grpc_requests_total", method="/grpc.health.v1.Health/Check")
        assert health == sum(per_process.values()) >= 30  # the sum over both processes (and the readiness probes)
        assert rpc.service.stop(signal.SIGTERM) == 0


def _kids_seen(url: str, tries: int = 24) -> set[frozenset[str]]:
    """The JWKS key ids each of `tries` new connections got (the kernel spreads them over the processes)."""
    seen = set()
    for _ in range(tries):
        with httpx.Client() as client:
            jwks = client.get(f"{url}/.well-known/jwks.json").json()
        seen.add(frozenset(key["kid"] for key in jwks["keys"]))
    return seen


def test_a_sighup_to_the_parent_refreshes_every_worker(
    server_url: str, template_db: str, redis_url: str, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "2026-01-01.pem").write_text(ed25519_pem())
    with spawn_service(server_url, template_db, redis_url, tmp_path, HTTP_WORKERS="2", JWT_KEYS_DIR=str(keys)) as api:
        _wait_for(lambda: len(_workers(api)) == 1 and _listening(api.service.port) == 2)
        children = _workers(api)
        assert _kids_seen(api.url) == {frozenset({"2026-01-01"})}
        (keys / "2026-03-01.pem").write_text(ed25519_pem())
        os.kill(api.service.proc.pid, signal.SIGHUP)  # the 60 s rescan is far away: only the signal can do it
        both = frozenset({"2026-01-01", "2026-03-01"})
        _wait_for(lambda: _kids_seen(api.url) == {both}, timeout=15, log=api.service.log)
        assert _workers(api) == children  # passed on and handled, not a child killed by it and replaced

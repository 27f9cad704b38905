"""The HTTP scenarios against the running service and the bare references, each one wrk run (1 thread)
after a discarded warm-up run."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import references
import service_proc
from seeding import PASSWORD
from wrk_runner import Load, finish, run, start

# After a warm-up of an Argon2 scenario, the hashes it left queued in the service still run for a while.
SETTLE = 2.0


@dataclass
class Http:
    """Where and how long to load, and the files the Lua scripts read."""

    url: str
    admin_url: str
    seconds: float
    warmup: float
    workdir: Path
    files: dict[str, Path]


def bare(server: str, workers: int, h: Http, connections: int) -> dict[str, Any]:
    """bench/bare_app.py under `server` with `workers` processes: GET /health at `connections`."""
    port = service_proc.free_port()
    proc = references.BareServer(server, port, workers, h.workdir / f"bare-{server}.log")
    try:
        proc.wait_up()
        load = Load("get.lua", proc.url, connections, h.seconds, {"GET_PATH": "/health"})
        return {**run(load, h.warmup), "server": server, "workers": workers}
    finally:
        proc.stop()


def register(h: Http, connections: int, retry_delay_ms: int) -> dict[str, Any]:
    """New accounts; the warm-up and the measured run get different RUN_IDs, so emails never repeat."""
    run_id = uuid.uuid4().hex[:10]
    env = {"PASSWORD": PASSWORD, "RETRY_DELAY_MS": str(retry_delay_ms)}
    if h.warmup > 0:
        warm = Load("register.lua", h.url, connections, h.warmup, {**env, "RUN_ID": f"{run_id}w"})
        finish(start(warm), warm)
        time.sleep(SETTLE)
    load = Load("register.lua", h.url, connections, h.seconds, {**env, "RUN_ID": f"{run_id}m"})
    return finish(start(load), load)


def login(h: Http, connections: int, retry_delay_ms: int) -> dict[str, Any]:
    env = {"CREDS_FILE": str(h.files["creds"]), "RETRY_DELAY_MS": str(retry_delay_ms)}
    return run(Load("login.lua", h.url, connections, h.seconds, env), h.warmup, SETTLE)


def overload(h: Http, connections: int, retry_delay_ms: int) -> dict[str, Any]:
    """Login at `connections` (twice what the Argon2 admission holds), /health probed meanwhile at ~100/s."""
    env = {"CREDS_FILE": str(h.files["creds"]), "RETRY_DELAY_MS": str(retry_delay_ms)}
    load = Load("login.lua", h.url, connections, h.seconds, env)
    if h.warmup > 0:
        finish(start(load, h.warmup), load)
        time.sleep(SETTLE)
    probe = Load("get.lua", h.url, 1, h.seconds, {"GET_PATH": "/health", "PACE_MS": "10"})
    probing = start(probe)
    result = finish(start(load), load)
    return {"login": result, "health": finish(probing, probe), "retry_delay_ms": retry_delay_ms}


def me(h: Http, connections: int) -> dict[str, Any]:
    return run(Load("me.lua", h.url, connections, h.seconds, {"TOKENS_FILE": str(h.files["access"])}), h.warmup)


def refresh(h: Http, connections: int) -> dict[str, Any]:
    """Rotation: the tokens left after the warm-up feed the measured run. The tokens in flight when a wrk run
    ends are lost (rotated by the service, the answer never read), so the warm-up uses few connections."""
    tokens = h.files["refresh"]
    if h.warmup > 0:
        left = h.workdir / "refresh_tokens.after-warmup.txt"
        env = {"TOKENS_FILE": str(tokens), "TOKENS_OUT": str(left)}
        warm = Load("refresh.lua", h.url, min(8, connections), h.warmup, env)
        finish(start(warm), warm)
        tokens = left
    pool = len(tokens.read_text().split())
    out = h.workdir / "refresh_tokens.after-run.txt"
    load = Load("refresh.lua", h.url, connections, h.seconds, {"TOKENS_FILE": str(tokens), "TOKENS_OUT": str(out)})
    return {**finish(start(load), load), "token_pool": pool}


def admin_paths(h: Http, users: int) -> dict[str, Path]:
    """Round-robin request lines: list pages and filters, and searches that each match a handful of users."""
    rng = random.Random(8)
    listing = [
        "/api/v1/admin/users?limit=20",
        "/api/v1/admin/users?limit=20&offset=20",
        "/api/v1/admin/users?limit=50&kyc_status=pending",
        "/api/v1/admin/users?limit=20&role=user&offset=100",
    ]
    searches = [f"/api/v1/admin/users/search?limit=20&query=user{rng.randrange(users):06d}"[:-1] for _ in range(64)]
    files = {"admin_list": h.workdir / "admin_list.txt", "admin_search": h.workdir / "admin_search.txt"}
    files["admin_list"].write_text("".join(f"{p}\n" for p in listing))
    files["admin_search"].write_text("".join(f"{p}\n" for p in searches))
    return files


def admin(h: Http, paths: Path, token: str, connections: int) -> dict[str, Any]:
    load = Load("admin.lua", h.admin_url, connections, h.seconds, {"TOKEN": token, "PATHS_FILE": str(paths)})
    return run(load, h.warmup)

"""The scenarios against the running service, in order: register, accounts, login, overload, me, refresh,
gRPC, then bulk users for admin list/search and the rebuild, and finally the memory of every process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import http_scenarios as hs
import seeding
import service_proc
import sub_benches
from steps import Bench, say

NEEDS_BULK = {"admin", "rebuild"}
NEEDS_ACCOUNTS = {"login", "overload", "me", "refresh", "grpc"}


def run_service(b: Bench, env: dict[str, str], h: hs.Http) -> None:
    service = service_proc.Service(env, b.workdir)
    b.step("pandora-users migrate", lambda: service_proc.run_cli("migrate", env=env, cwd=b.workdir))
    say(f"  serve log: {service.log}")
    try:
        b.step("start pandora-users serve", service.start)
        if "start pandora-users serve" in b.results["failed"]:
            return
        pids = service.processes()
        b.results["config"]["serve_processes"] = [service_proc.memory(p)["cmd"] for p in pids]
        say(f"  serve is ready: {len(pids)} process(es) (serve + {len(pids) - 1} children)")
        settings = service.settings()
        workers = getattr(settings, "http_workers", 1)
        per_process = settings.argon2_max_concurrency + settings.argon2_queue_size
        login_c = b.args.login_connections or min(16, workers * per_process)
        b.results["config"]["argon2_admission"] = {"workers": workers, "slots_plus_queue_per_worker": per_process}
        if b.wants("register"):
            b.results["register"] = b.step(f"register (c={login_c})", lambda: hs.register(h, login_c, backoff(b)))
        accounts = None
        if any(b.wants(s) for s in NEEDS_ACCOUNTS):
            # One process admits `per_process` hashes at once; never more in flight, so seeding sees no 503.
            accounts = b.step("seed 64 accounts over the API", lambda: _accounts(b, service, per_process))
        if accounts is not None:
            h.files = accounts.write(b.workdir)
            run_auth_scenarios(b, h, login_c)
            if b.wants("grpc"):
                b.results["grpc"] = b.step("gRPC (grpc_bench.py)", lambda: _grpc(b, service, accounts.user_ids[0]))
        if any(b.wants(s) for s in NEEDS_BULK):
            run_bulk_scenarios(b, service, settings, h)
        b.results["memory"] = [service_proc.memory(p) for p in service.processes()]
    finally:
        b.results["serve_exit"] = service.stop()


def _accounts(b: Bench, service: service_proc.Service, parallel: int) -> seeding.Accounts:
    started = time.perf_counter()
    accounts = asyncio.run(seeding.seed_accounts(service.url, b.run_id, 64, logins=1, parallel=parallel))
    say(f"  {len(accounts.creds)} accounts, {len(accounts.refresh)} sessions in {time.perf_counter() - started:.1f} s")
    return accounts


def _grpc(b: Bench, service: service_proc.Service, user_id: str) -> dict[str, Any]:
    token = service_proc.service_token(service.env)
    c = b.args.grpc_concurrency
    return {
        "concurrency": c,
        **sub_benches.grpc(
            service.grpc_target,
            token,
            user_id,
            f"{service.admin_url}/metrics",
            concurrency=c,
            seconds=b.args.seconds,
            warmup=b.args.warmup,
        ),
    }


def backoff(b: Bench) -> int:
    """How long a client answered 503/429 waits before trying again: about one verify with the pool busy
    (the reference's p50)."""
    delay = round((b.results.get("argon2") or {}).get("p50_ms") or 200.0)
    b.results["config"]["retry_delay_ms"] = delay
    return delay


def run_auth_scenarios(b: Bench, h: hs.Http, login_c: int) -> None:
    r = b.results
    if b.wants("login"):
        r["login"] = b.step(f"login (c={login_c})", lambda: hs.login(h, login_c, backoff(b)))
    if b.wants("overload"):
        c = 2 * login_c
        r["overload"] = b.step(f"overload: login c={c} + /health probe", lambda: hs.overload(h, c, backoff(b)))
    if b.wants("me"):
        r["me"] = b.step(f"GET /users/me (c={b.args.me_connections})", lambda: hs.me(h, b.args.me_connections))
    if b.wants("refresh"):
        c = b.args.refresh_connections
        r["refresh"] = b.step(f"refresh with rotation (c={c})", lambda: hs.refresh(h, c))


def run_bulk_scenarios(b: Bench, service: service_proc.Service, settings: Any, h: hs.Http) -> None:
    n = b.args.admin_users
    bulk = b.step(
        f"bulk-seed {n:,} users (EventStore, 500 per commit)", lambda: seeding.bulk_users(service.env, b.run_id, n)
    )
    if bulk is None:
        return
    say(f"  appended {bulk['events']:,} events in {bulk['seconds']:.1f} s; waiting for the projectors")
    bulk["catch_up_seconds"] = b.step("projectors catch up", lambda: seeding.wait_projected(settings, bulk["head"]))
    if bulk["catch_up_seconds"] is None:
        return
    b.results["bulk"] = bulk
    if b.wants("admin"):
        token = b.step("create-admin + admin login", lambda: _admin_token(b, service))
        if token is not None:
            paths = hs.admin_paths(h, n)
            c = b.args.admin_connections
            for name in ("admin_list", "admin_search"):
                b.results[name] = b.step(f"{name} (c={c})", lambda k=name: hs.admin(h, paths[k], token, c))
    if b.wants("rebuild"):
        b.results["rebuild"] = b.step("pandora-users rebuild users", lambda: _rebuild(b, service))


def _admin_token(b: Bench, service: service_proc.Service) -> str:
    email = f"admin-{b.run_id}@example.com"
    service_proc.run_cli(
        "create-admin", "--email", email, env=service.env, cwd=b.workdir, stdin=seeding.PASSWORD + "\n"
    )
    return seeding.admin_token(service.admin_url, email, seeding.PASSWORD)


def _rebuild(b: Bench, service: service_proc.Service) -> dict[str, Any]:
    started = time.perf_counter()
    out = service_proc.run_cli("rebuild", "users", env=service.env, cwd=b.workdir)
    return {**sub_benches.parse_cli_rebuild(out), "wall_seconds": time.perf_counter() - started, "output": out.strip()}

"""`just bench` (issue #8): the service as production runs it, loaded scenario by scenario, beside its references.

    .venv/bin/python bench/run.py [--quick] [--only login,me,...] [--seconds 10] [--out results.json]

1. References first, before the service runs: bare Argon2id verify (service parameters, ARGON2_MAX_CONCURRENCY
   threads per HTTP worker) and a bare Litestar endpoint under uvicorn and granian with the service's workers.
   The two that ratios divide by (verify, and the server `serve` runs on) are measured again after the service
   stops; ratios use the mean of both.
2. `pandora-users migrate` and `pandora-users serve` on a fresh database and Redis prefix, prod-like settings
   (rate limits off), accounts seeded over the API; register, login, overload, me, refresh with wrk; an admin
   from `create-admin`, bulk users, admin list and search; gRPC via grpc_bench.py (h2load);
   `pandora-users rebuild users`; peak memory of every service process.
3. The standalone benches: append_bench.py and projections_bench.py.
4. One table on stdout, the raw results as JSON in --out. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import http_scenarios as hs
import references
import results_table
import service_proc
import sub_benches
from service_run import run_service
from steps import Bench, say
from wrk_runner import wrk_available

SCENARIOS = (
    "argon2",
    "bare",
    "register",
    "login",
    "overload",
    "me",
    "refresh",
    "admin",
    "grpc",
    "rebuild",
    "append",
    "read-side",
)
NEEDS_SERVICE = {"register", "login", "overload", "me", "refresh", "admin", "grpc", "rebuild"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 3 s per scenario, 2,000 admin users")
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    p.add_argument("--seconds", type=float, help="measured seconds per scenario (default 10; --quick 3)")
    p.add_argument("--warmup", type=float, help="discarded warm-up seconds per scenario (default 2; --quick 1)")
    p.add_argument("--out", type=Path, help="raw results as JSON (default: a file in the temp dir)")
    p.add_argument("--admin-users", type=int, help="bulk users for admin and rebuild (default 100,000; --quick 2,000)")
    p.add_argument(
        "--server-url",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL to create the fresh databases on (BENCH_POSTGRES_URL)",
    )
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="HTTP_WORKERS (default: CPUs)")
    p.add_argument(
        "--bare-reference",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="the bare server me/refresh are compared to: the one serve runs on (uvicorn)",
    )
    p.add_argument("--login-connections", type=int, help="default: what the Argon2 admission holds, at most 16")
    p.add_argument("--db-pool-max", type=int, help="DB_POOL_MAX (default: 25, or less to fit max_connections)")
    p.add_argument("--me-connections", type=int, default=64)
    p.add_argument("--refresh-connections", type=int, default=64)
    p.add_argument("--admin-connections", type=int, default=16)
    p.add_argument("--grpc-concurrency", type=int, default=32)
    p.add_argument("--append-concurrency", type=int, default=32)
    p.add_argument(
        "--read-side-events", type=int, help="events projections_bench seeds (default 50,000; --quick 5,000)"
    )
    p.add_argument("--read-side-seconds", type=float, help="steady-rate lag measurement (default 20; --quick 5)")
    args = p.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds or (3.0 if quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.admin_users = args.admin_users or (2_000 if quick else 100_000)
    args.read_side_events = args.read_side_events or (5_000 if quick else 50_000)
    args.read_side_seconds = args.read_side_seconds or (5.0 if quick else 20.0)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out = args.out or Path(tempfile.gettempdir()) / f"pandora-bench-{stamp}.json"
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := [s for s in args.only if s not in SCENARIOS]:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


def configure(b: Bench, database_url: str) -> dict[str, str]:
    pool_max, server = service_proc.db_pool_budget(b.args.server_url, b.args.workers)
    if b.args.db_pool_max:
        pool_max = b.args.db_pool_max
    env = service_proc.prod_like_env(
        database_url, b.args.redis_url, b.run_id, b.workdir, workers=b.args.workers, db_pool_max=pool_max
    )
    app_env, refused = service_proc.pick_app_env(env)
    env["APP_ENV"] = app_env
    for stricter, problems in refused.items():
        say(f"APP_ENV={stricter} refuses this configuration: {'; '.join(problems)}")
    say(
        f"APP_ENV={app_env}: real Argon2 defaults, JSON logs at warning, EdDSA, data keys, service tokens, "
        f"no Vault/TLS; RATE_LIMIT_ENABLED=false (rate limits DISABLED so the load is not throttled); "
        f"HTTP_WORKERS={b.args.workers}; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')} "
        "(service and references alike)"
    )
    if pool_max < 25:
        say(
            f"DB_POOL_MAX={pool_max} (default 25), so every service process fits in the shared PostgreSQL: "
            f"max_connections={server['max_connections']}, {server['in_use_by_others']} in use by others"
        )
    b.results["config"] = {
        "app_env": app_env,
        "refused": refused,
        "http_workers": b.args.workers,
        "rate_limits": "disabled",
        "db_pool_max": pool_max,
        "postgres": server,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "seconds": b.args.seconds,
        "warmup": b.args.warmup,
        "quick": b.args.quick,
    }
    return env


def run_references(b: Bench, settings: Any, h: hs.Http) -> None:
    if b.wants("argon2") or b.wants("login") or b.wants("register"):
        b.results["argon2"] = b.step(
            "reference: bare Argon2id verify", lambda: references.argon2_verify(settings, b.args.seconds)
        )
        b.results["argon2_kept"] = b.step(
            "reference: Argon2id verify on kept memory (the service's hasher)",
            lambda: references.argon2_verify(settings, b.args.seconds, kept_memory=True),
        )
    if b.wants("bare") or b.wants("me") or b.wants("refresh"):
        for server in ("uvicorn", "granian"):
            result = b.step(f"reference: bare Litestar on {server}", lambda s=server: hs.bare(s, b.args.workers, h, 64))
            if result is not None:
                b.results["bare"][server] = result


def run_references_again(b: Bench, settings: Any, h: hs.Http) -> None:
    """The references the service's rows are divided by, measured again once the service has stopped: the
    machine is shared and drifts over a run, so a ratio divides by the mean of the measurement before and after
    (both are in the table)."""
    if b.wants("login") or b.wants("register"):
        b.results["argon2_after"] = b.step(
            "reference again: bare Argon2id verify", lambda: references.argon2_verify(settings, b.args.seconds)
        )
    if b.wants("me") or b.wants("refresh"):
        server = b.args.bare_reference
        b.results["bare_after"] = b.step(
            f"reference again: bare Litestar on {server}", lambda: hs.bare(server, b.args.workers, h, 64)
        )


def run_standalone(b: Bench) -> None:
    a = b.args
    if b.wants("append"):
        b.results["append"] = b.step(
            f"event append (append_bench.py, {a.append_concurrency} concurrent)",
            lambda: sub_benches.append(a.server_url, a.redis_url, concurrency=a.append_concurrency, seconds=a.seconds),
        )
    if b.wants("read-side"):
        b.results["read_side"] = b.step(
            "read side (projections_bench.py)",
            lambda: sub_benches.read_side(
                a.server_url, a.redis_url, events=a.read_side_events, rate=100, seconds=a.read_side_seconds
            ),
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    b = Bench(args)
    if not wrk_available() or (b.wants("grpc") and shutil.which("h2load") is None):
        say("error: wrk or h2load is not installed (apt-get install -y wrk nghttp2-client; `just bench` does it)")
        return 2
    say(
        f"pandora-users bench {b.run_id}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"{args.seconds:g} s per scenario after {args.warmup:g} s warm-up; scratch {b.workdir}"
    )
    database_url = service_proc.create_database(args.server_url)
    env: dict[str, str] = {}
    try:
        env = configure(b, database_url)
        settings = service_proc.load_settings(env)
        h = hs.Http("", "", args.seconds, args.warmup, b.workdir, {})
        run_references(b, settings, h)
        if any(b.wants(s) for s in NEEDS_SERVICE):
            h.url = f"http://127.0.0.1:{env['SERVER_PORT']}"
            h.admin_url = f"http://127.0.0.1:{env['ADMIN_PORT']}"
            run_service(b, env, h)
            run_references_again(b, settings, h)
    finally:
        service_proc.drop_database(args.server_url, database_url)
        if env:
            service_proc.clean_redis(args.redis_url, env["REDIS_KEY_PREFIX"], env["EVENTS_STREAM"])
    run_standalone(b)
    b.results["wall_seconds"] = time.perf_counter() - b.started
    report(b)
    return 0


def report(b: Bench) -> None:
    rows = results_table.build_rows(b.results)
    failed = b.results["failed"]
    rows += [results_table.Row(name, "FAILED", errors="see below", verdict="–") for name in failed]
    say("")
    say(results_table.render(rows))
    for name, reason in failed.items():
        say(f"FAILED {name}: {reason}")
    say(
        f"\n{b.results['config']['app_env']} profile, rate limits disabled, HTTP_WORKERS={b.args.workers}; "
        f"total {b.results['wall_seconds']:.0f} s; raw results: {b.args.out}"
    )
    b.args.out.parent.mkdir(parents=True, exist_ok=True)
    b.args.out.write_text(json.dumps(b.results, indent=2, default=str))
    shutil.rmtree(b.workdir / "data", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

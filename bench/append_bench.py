"""Write-side benchmark (not a test): events/s of concurrent commands with group commit on and off.

    DATABASE_URL=postgresql://... .venv/bin/python bench/append_bench.py --concurrency 32 --seconds 10 [--json]

Creates a fresh database on the server of DATABASE_URL, migrates it with the project's migrations, runs each
workload with group commit on, then off, for `--seconds` after a warm-up, and drops the database. Each of the
`--concurrency` workers has its own pre-created users (nothing conflicts, nothing hashes a password) and
alternates admin KYC changes and profile updates, one event each:

- `appends`: decided by the domain functions on state kept in memory, then `EventStore.append` (the write path);
- `commands`: the command functions themselves (load the user, decide, append), through a `WriteSide`.

Prints events/s, commits/s and p50/p99 command latency per workload and mode; `--json` prints one object
instead: {"concurrency", "seconds", "cpus", "<workload>": {"on": {...}, "off": {...}}}. Numbers depend on the
machine and what else it runs: quote them with the machine they came from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from pandora_users.commands import account, admin
from pandora_users.commands.base import WriteConfig, WriteSide
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.domain.user import User
from pandora_users.security.hashing import Argon2Params, PasswordHasher
from pandora_users.security.passwords import Blocklist
from pandora_users.store import credentials as cred
from pandora_users.store.app import EventStore, postgres_env
from pandora_users.store.migrate import migrate

KEK, PEPPER = os.urandom(32), os.urandom(32)
KYC = ("verified", "rejected", "pending")
USERS_PER_WORKER = 64


def with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def create_database(server_url: str) -> tuple[str, str]:
    """A fresh database, migrated as `pandora-users migrate` does; its name and URL."""
    name = f"pandora_append_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_db(server_url, name)
    store = EventStore(postgres_env(url, pool_size=1, max_overflow=0, lock_timeout=5), KEK)
    try:
        migrate(url, store, {"data_encryption_key": KEK, "email_index_key": PEPPER})
    finally:
        store.close()
    return name, url


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed_users(store: EventStore, count: int) -> dict[uuid.UUID, User]:
    """`count` registered users with their data keys (500 per commit), and their states."""
    users: dict[uuid.UUID, User] = {}
    ids = [uuid.uuid4() for _ in range(count)]
    for start in range(0, count, 500):
        events, ops = [], []
        for uid in ids[start : start + 500]:
            _key, wrapped = store.keys.new_key(uid)
            email = f"{uid.hex[:12]}@example.com"
            ctx = Context()
            event = user_agg.register(uid, email=email, first_name="Bench", last_name="User", role="user", ctx=ctx)
            events.append(event)
            ops.append(cred.put_data_key(uid, wrapped))
            users[uid] = user_agg.apply(None, event)
        store.append(events, ops)
    return users


def write_side(store: EventStore, threads: int) -> WriteSide:
    hasher = PasswordHasher(
        Argon2Params(memory_kib=8192, time_cost=1, parallelism=1, hash_length=32, salt_length=16),
        max_concurrency=1,
        queue_size=1,
        queue_timeout=1.0,
    )
    executor = ThreadPoolExecutor(threads, thread_name_prefix="write")
    return WriteSide(store, PEPPER, hasher, Blocklist(frozenset()), WriteConfig(), executor=executor)


class Tally:
    """What the measured window saw: command latencies, events appended, transactions committed."""

    def __init__(self) -> None:
        self.measuring = False
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.events = 0
        self.commits = 0
        self._lock = threading.Lock()

    def committed(self, appends: int) -> None:  # the recorder's on_commit hook, on the committing thread
        if self.measuring:
            with self._lock:
                self.commits += 1

    def command(self, started: float, events: int) -> None:
        if self.measuring:
            with self._lock:
                self.latencies.append(time.perf_counter() - started)
                self.events += events


async def command_worker(w: WriteSide, users: list[uuid.UUID], tally: Tally) -> None:
    """KYC changes and profile updates through the command functions (load, decide, append), one event each."""
    n = 0
    while not tally.stop.is_set():
        uid, started = users[n % len(users)], time.perf_counter()
        if n % 2:
            status = KYC[(n // 2) % 3]  # this worker's users see the statuses in turn: always a change
            _, written = await admin.change_kyc(w, uid, status, if_match=None, ctx=Context())
        else:
            _, written = await account.update_profile(
                w, uid, first_name=f"Bench{n}", last_name=None, if_match=None, ctx=Context()
            )
        tally.command(started, written.position is not None)
        n += 1


def append_worker(store: EventStore, users: dict[uuid.UUID, User], tally: Tally) -> None:
    """The same decisions on state kept in memory (no load): only the append of the real domain events."""
    ids, n = list(users), 0
    while not tally.stop.is_set():
        uid, started = ids[n % len(ids)], time.perf_counter()
        user = users[uid]
        if n % 2:
            events = user_agg.change_kyc(user, KYC[(n // 2) % 3], self_service=False, ctx=Context())
        else:
            events = user_agg.update_profile(user, first_name=f"Bench{n}", last_name=None, ctx=Context())
        if events:
            store.append(events)
            users[uid] = user_agg.project(user, events) or user
        tally.command(started, len(events))
        n += 1


async def drive(
    store: EventStore, users: dict[uuid.UUID, User], args: argparse.Namespace, workload: str, tally: Tally
) -> None:
    """Run the workload's workers, measure `seconds` after `warmup`, then stop them."""
    ids = list(users)
    shares = [ids[i :: args.concurrency] for i in range(args.concurrency)]
    w = write_side(store, args.concurrency)
    if workload == "commands":
        workers: list[Awaitable[None]] = [command_worker(w, share, tally) for share in shares]
    else:
        loop = asyncio.get_running_loop()  # each worker on its own write thread, as commands run
        workers = [
            loop.run_in_executor(w.executor, append_worker, store, {u: users[u] for u in share}, tally)
            for share in shares
        ]
    try:
        running = asyncio.gather(*workers)
        await asyncio.sleep(args.warmup)
        tally.measuring = True
        await asyncio.sleep(args.seconds)
        tally.measuring = False
        tally.stop.set()
        await running
    finally:
        w.close()
        w.hasher.close()


def run_mode(url: str, args: argparse.Namespace, *, workload: str, group_commit: bool) -> dict[str, Any]:
    env = postgres_env(url, pool_size=4, max_overflow=args.concurrency, lock_timeout=5, group_commit=group_commit)
    store = EventStore(env, KEK)
    tally = Tally()
    try:
        users = seed_users(store, args.concurrency * USERS_PER_WORKER)
        store.recorder.on_commit = tally.committed  # type: ignore[attr-defined]
        asyncio.run(drive(store, users, args, workload, tally))
    finally:
        store.close()
    latencies, seconds = sorted(tally.latencies), args.seconds
    return {
        "group_commit": group_commit,
        "commands": len(latencies),
        "events_per_s": round(tally.events / seconds, 1),
        "commits_per_s": round(tally.commits / seconds, 1),
        "events_per_commit": round(tally.events / tally.commits, 2) if tally.commits else None,
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--modes", default="on,off", help="group commit modes to run, in order")
    parser.add_argument("--workload", choices=("appends", "commands", "both"), default="both")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    server_url = os.environ.get("DATABASE_URL")
    if not server_url:
        sys.exit("DATABASE_URL must name a PostgreSQL server (its database is only used to create another)")
    workloads = ["appends", "commands"] if args.workload == "both" else [args.workload]
    modes = args.modes.split(",")
    results: dict[str, Any] = {"concurrency": args.concurrency, "seconds": args.seconds, "cpus": os.cpu_count()}
    name, url = create_database(server_url)
    try:
        for workload in workloads:
            results[workload] = {m: run_mode(url, args, workload=workload, group_commit=m == "on") for m in modes}
    finally:
        drop_database(server_url, name)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.concurrency} concurrent commands, {args.seconds:g} s per run, {os.cpu_count()} cpus")
    for workload in workloads:
        for mode in modes:
            r = results[workload][mode]
            print(
                f"{workload:8} group commit {mode:3}: {r['events_per_s']:7.1f} events/s"
                f" {r['commits_per_s']:6.1f} commits/s ({r['events_per_commit']} events/commit)"
                f"  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms"
            )


if __name__ == "__main__":
    main()

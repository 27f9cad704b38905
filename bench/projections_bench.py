"""Read-side benchmark (not a test): projection lag under a steady write load, rebuild catch-up rate, and
forwarder throughput, on a fresh database of the PostgreSQL and Redis named by DATABASE_URL / REDIS_URL
(embedded servers when unset).

    .venv/bin/python bench/projections_bench.py [--events 100000] [--rate 100] [--seconds 20]

Numbers depend on the machine: quote them with the machine they came from.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
import redis

from pandora_users.domain import events as ev
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.infra.embedded import EmbeddedServers
from pandora_users.store import credentials as cred
from pandora_users.store.app import EventStore, postgres_env
from pandora_users.store.migrate import migrate
from projections.forwarder import ForwarderProjection
from projections.rebuild import rebuild
from projections.registry import ProjectionDeps, Supervisor
from projections.runner import Runner, read_position

KEK, PEPPER = os.urandom(32), os.urandom(32)


def servers() -> tuple[str, str, EmbeddedServers | None]:
    pg, rd = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if pg and rd:
        return pg, rd, None
    embedded = EmbeddedServers(Path(tempfile.mkdtemp(prefix="pandora-bench-")))
    urls = embedded.start(need_postgres=not pg, need_redis=not rd)
    return pg or urls["DATABASE_URL"], rd or urls["REDIS_URL"], embedded


def fresh_database(server_url: str) -> str:
    name = f"pandora_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


def seed(store: EventStore, users: int, events: int) -> list[uuid.UUID]:
    """`users` registrations, then KYC changes on them until `events` events exist (500 per commit)."""
    ids, batch, ops = [], [], []
    for _ in range(users):
        uid = uuid.uuid4()
        _key, wrapped = store.keys.new_key(uid)
        batch.append(
            user_agg.register(
                uid,
                email=f"{uid.hex[:12]}@example.com",
                first_name="Bench",
                last_name="User",
                role="user",
                ctx=Context(),
            )
        )
        ops.append(cred.put_data_key(uid, wrapped))
        ids.append(uid)
    store.append(batch, ops)
    versions = dict.fromkeys(ids, 1)
    statuses = ("verified", "rejected", "pending")
    written = users
    while written < events:
        batch = []
        for i in range(min(500, events - written)):
            uid = ids[(written + i) % users]
            old = statuses[(versions[uid] + 1) % 3] if versions[uid] > 1 else "pending"
            versions[uid] += 1
            batch.append(
                ev.UserKycUpdated(
                    originator_id=uid,
                    originator_version=versions[uid],
                    timestamp=Context().now,
                    user_id=uid,
                    email="bench@example.com",
                    kyc_status=statuses[versions[uid] % 3],
                    old_status=old,
                )
            )
        store.append(batch)
        written += len(batch)
    return ids


def forwarder_rate(store: EventStore, conninfo: str, redis_url: str, head: int) -> float:
    stream = f"bench-{uuid.uuid4().hex[:8]}"
    projection = ForwarderProjection.from_deps(
        ProjectionDeps(store, conninfo, redis_url, events_stream=stream, events_stream_maxlen=head + 10, batch_size=500)
    )
    runner = Runner(store, conninfo, projection, batch_size=500)
    started = time.perf_counter()
    while runner.step():
        pass
    seconds = time.perf_counter() - started
    redis.Redis.from_url(redis_url).delete(stream)
    return head / seconds


def steady_lag(store: EventStore, conninfo: str, ids: list[uuid.UUID], rate: float, seconds: float) -> list[float]:
    """Append one event per commit at `rate`/s; return how long `users` and `event_log` took to apply each."""
    supervisor = Supervisor(ProjectionDeps(store, conninfo, None), ["users", "event_log"], idle_poll=1.0)
    supervisor.start()
    lags: list[float] = []
    pending: dict[int, float] = {}
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            while not done.is_set() or pending:
                reached = min(read_position(conn, "users"), read_position(conn, "event_log"))
                now = time.perf_counter()
                for position in [p for p in pending if p <= reached]:
                    lags.append(now - pending.pop(position))
                time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    deadline, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        user = store.load(ids[n % len(ids)], user_agg.project)
        assert user is not None
        status = ("verified", "rejected", "pending")[(user.version + n) % 3]
        events = user_agg.change_kyc(user, status, self_service=False, ctx=Context())
        position = store.append(events) if events else None
        if position is not None:
            pending[position] = time.perf_counter()
        n += 1
        time.sleep(max(0.0, 1 / rate - 0.001))
    done.set()
    watcher.join(30)
    supervisor.stop()
    return lags


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    server_url, redis_url, embedded = servers()
    conninfo = fresh_database(server_url)
    store = EventStore(postgres_env(conninfo, pool_size=4, max_overflow=8, lock_timeout=5), KEK)
    try:
        migrate(conninfo, store, {"data_encryption_key": KEK, "email_index_key": PEPPER})
        started = time.perf_counter()
        ids = seed(store, 1000, args.events)
        print(f"seeded {args.events} events in {time.perf_counter() - started:.1f} s")
        head = store.head_position()
        for name in ("users", "event_log"):
            report = rebuild(store, conninfo, name, kek=KEK)
            print(f"rebuild {name:<9} {report.events:>7} events  {report.events_per_second:>8.0f} events/s")
        print(f"forwarder          {head:>7} events  {forwarder_rate(store, conninfo, redis_url, head):>8.0f} events/s")
        lags = steady_lag(store, conninfo, ids, args.rate, args.seconds)
        print(
            f"projection lag at {args.rate:.0f} events/s over {len(lags)} events: "
            f"p50 {1000 * statistics.median(lags):.1f} ms  p99 {1000 * percentile(lags, 0.99):.1f} ms"
        )
    finally:
        store.close()
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()

"""The users and event_log projections on real PostgreSQL, fed by the real commands.

Also the shared helpers of the read-model tests (seeding, running projections to the head, snapshots).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pandora_users.commands import account, admin, registration
from pandora_users.commands import authentication as auth
from pandora_users.commands.base import WriteSide
from pandora_users.domain import events as ev
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.domain.errors import AccountLocked, InvalidCredentials
from pandora_users.store import credentials as cred
from pandora_users.store.app import EventStore
from projections.event_log import EventLogProjection, event_id
from projections.rebuild import active_table, rebuild
from projections.registry import READ_MODELS
from projections.runner import Envelope, Projection, Runner, read_position, wait_until
from projections.users import UsersProjection
from tests.integration.test_registration import reg

ADMIN = Context(metadata={"actor_id": str(uuid.uuid4()), "actor_role": "admin", "ip_address": "10.0.0.7"})
KEYS = {"users": "id", "event_log": "position"}


def projection(name: str) -> Projection:
    return UsersProjection() if name == "users" else EventLogProjection()


def project_to_head(store: EventStore, conninfo: str, names: Sequence[str] = READ_MODELS, batch: int = 100) -> None:
    """Run each live projection's batched path until it has consumed every event."""
    for name in names:
        runner = Runner(store, conninfo, projection(name), batch_size=batch)
        while runner.step():
            pass


def snapshot(conninfo: str, view: str) -> list[dict[str, Any]]:
    """Every row of a read model (through its view), in key order."""
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        query = sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier(view), sql.Identifier(KEYS[view]))
        return conn.execute(query).fetchall()


def tables(conninfo: str, name: str) -> tuple[str, list[str]]:
    """(the table behind the view, every `<name>_vN` table that exists)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        current = active_table(conn, name)
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename ~ %s ORDER BY tablename", (f"^{name}_v[0-9]+$",)
        ).fetchall()
    return current, [r[0] for r in rows]


@dataclass(frozen=True)
class Seeded:
    id: uuid.UUID
    position: int


def seed_user(
    store: EventStore,
    *,
    email: str,
    first: str = "Ann",
    last: str = "Lee",
    at: datetime | None = None,
    kyc: str | None = None,
    role: str | None = None,
    deleted: bool = False,
) -> Seeded:
    """A user written straight through the domain functions (no hashing): fast, realistic events."""
    user_id = uuid.uuid4()
    c = Context(now=at) if at is not None else Context()
    events = [user_agg.register(user_id, email=email, first_name=first, last_name=last, role="user", ctx=c)]
    for decide in (
        (lambda s: user_agg.change_kyc(s, kyc, self_service=False, ctx=c)) if kyc else None,
        (lambda s: user_agg.change_role(s, role, ctx=c)) if role else None,
        (lambda s: user_agg.delete(s, ctx=c)) if deleted else None,
    ):
        if decide is not None:
            events += decide(user_agg.project(None, events))
    _key, wrapped = store.keys.new_key(user_id)
    position = store.append(events, [cred.put_data_key(user_id, wrapped)])
    assert position is not None
    return Seeded(user_id, position)


def seed_many(store: EventStore, n: int, per_append: int = 200, prefix: str = "bulk") -> int:
    """`n` registered users, each with a KYC change, appended `per_append` users per transaction."""
    position = 0
    for start in range(0, n, per_append):
        events: list[ev.DomainEvent] = []
        ops = []
        for i in range(start, min(n, start + per_append)):
            user_id = uuid.uuid4()
            registered = user_agg.register(
                user_id, email=f"{prefix}{i}@example.com", first_name=f"F{i}", last_name="L", role="user", ctx=Context()
            )
            events += [
                registered,
                *user_agg.change_kyc(registered_state(registered), "verified", self_service=False, ctx=Context()),
            ]
            _key, wrapped = store.keys.new_key(user_id)
            ops.append(cred.put_data_key(user_id, wrapped))
        position = store.append(events, ops) or position
    return position


def registered_state(event: ev.DomainEvent) -> user_agg.User:
    return user_agg.apply(None, event)


class Live:
    """The live users and event_log runners in threads, as `serve` runs them."""

    def __init__(self, store: EventStore, conninfo: str, batch_size: int = 50) -> None:
        self.store = store
        self.runners = [
            Runner(store, conninfo, projection(n), batch_size=batch_size, idle_poll=0.05) for n in READ_MODELS
        ]
        self.threads = [threading.Thread(target=r.run, daemon=True) for r in self.runners]

    def __enter__(self) -> Live:
        for thread in self.threads:
            thread.start()
        return self

    def wait(self, position: int | None = None, timeout: float = 30.0) -> None:
        target = self.store.head_position() if position is None else position
        for runner in self.runners:
            assert wait_until(self.store, runner, target, timeout), f"{runner.name} did not reach {target}"

    def __exit__(self, *_: object) -> None:
        for runner in self.runners:
            runner.stop()
        for thread in self.threads:
            thread.join(10)


def _row_of(user: user_agg.User) -> dict[str, Any]:
    erased = user.erased_at is not None
    fields = ("id", "role", "kyc_status", "email_verified_at", "created_at", "updated_at", "version")
    row = {f: getattr(user, f) for f in (*fields, "locked_until", "deleted_at", "erased_at")}
    row.update(email=None if erased else user.email, first_name=user.first_name, last_name=user.last_name)
    return row


async def test_users_view_equals_the_write_model_after_real_commands(write_side: WriteSide, database_url: str) -> None:
    w = write_side
    ann = (await registration.register(w, reg("ann@example.com"), Context())).user.id
    bob = (await registration.register(w, reg("bob@example.com"), Context())).user.id
    eve = (await registration.register(w, reg("eve@example.com"), Context())).user.id
    await admin.change_kyc(w, ann, "verified", if_match=None, ctx=ADMIN)
    await admin.change_role(w, bob, "admin", if_match=None, ctx=ADMIN)
    await account.update_profile(w, bob, first_name="Robert", last_name=None, if_match=None, ctx=Context())
    for _ in range(3):
        with pytest.raises((InvalidCredentials, AccountLocked)):
            await auth.log_in(w, auth.LoginAttempt("bob@example.com", "wrong password!"), Context())
    await account.delete_user(w, eve, if_match=None, ctx=ADMIN, must_be_live=False)
    await admin.erase(w, ann, if_match=None, ctx=ADMIN)
    with Live(w.store, database_url, batch_size=3) as live:
        live.wait()
    rows = {row["id"]: row for row in snapshot(database_url, "users")}
    head = w.store.head_position()
    for user_id in (ann, bob, eve):
        user = w.store.load(user_id, user_agg.project)
        assert user is not None
        row = dict(rows[user_id])
        assert 0 < row.pop("position") <= head
        assert row == _row_of(user)
    assert rows[ann]["email"] is None and rows[ann]["first_name"] == ev.ERASED
    assert rows[bob]["locked_until"] is not None and rows[bob]["first_name"] == "Robert"


async def test_event_log_indexes_every_published_event_once(write_side: WriteSide, database_url: str) -> None:
    w = write_side
    ann = (await registration.register(w, reg("ann@example.com"), Context())).user.id
    await admin.change_kyc(w, ann, "rejected", if_match=None, ctx=ADMIN)
    await admin.erase(w, ann, if_match=None, ctx=ADMIN)
    project_to_head(w.store, database_url, ["event_log"], batch=2)
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        stored = conn.execute("SELECT notification_id, topic FROM pandora_events ORDER BY notification_id").fetchall()
        assert read_position(conn, "event_log") == stored[-1]["notification_id"]
    published = [r["notification_id"] for r in stored if r["topic"] in ev.PUBLISHED_TOPICS]
    rows = snapshot(database_url, "event_log")
    assert [r["position"] for r in rows] == published
    assert len(published) < len(stored)  # the email index's events are not indexed
    by_type = {r["event_type"]: r for r in rows}
    kyc = by_type["user.kyc.updated"]
    assert kyc["event_id"] == event_id(ann, kyc["aggregate_version"])
    assert (kyc["user_id"], kyc["aggregate_id"], kyc["actor_id"], kyc["schema_version"]) == (
        ann,
        ann,
        ADMIN.metadata["actor_id"],
        1,
    )
    assert set(by_type) >= {"user.registered", "user.logged_in", "user.email_verification.requested", "user.erased"}
    assert set(rows[0]) == {
        "position",
        "event_id",
        "event_type",
        "user_id",
        "aggregate_id",
        "aggregate_version",
        "timestamp",
        "schema_version",
        "actor_id",
    }  # no payload, no personal data


class Crashing:
    """Applies half a batch through the real projection, then dies as a killed process would."""

    def __init__(self, inner: Projection, how: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.how = how

    def apply(self, conn: psycopg.Connection[Any], batch: Sequence[Envelope]) -> None:
        self.inner.apply(conn, batch[: len(batch) // 2 + 1])
        if self.how == "interrupt":
            raise KeyboardInterrupt
        conn.close()  # the connection drops mid-transaction
        raise SystemExit


def _run_until_dead(runner: Runner) -> None:
    try:
        runner.run()
    except BaseException:
        runner.stop()


@pytest.mark.parametrize("how", ["interrupt", "connection_lost"])
def test_projector_killed_mid_batch_resumes_to_a_rebuilt_equal_view(
    event_store: EventStore, database_url: str, how: str
) -> None:
    for i in range(12):
        seed_user(event_store, email=f"user{i}@example.com", kyc="verified" if i % 2 else None, deleted=i % 5 == 0)
    head = event_store.head_position()
    for name in READ_MODELS:
        dying = Runner(event_store, database_url, Crashing(projection(name), how), batch_size=8, idle_poll=0.05)
        thread = threading.Thread(target=_run_until_dead, args=(dying,), daemon=True)
        thread.start()
        thread.join(20)
        assert not thread.is_alive()
        with psycopg.connect(database_url) as conn:
            assert read_position(conn, name) == 0
        assert snapshot(database_url, name) == []  # the half-applied batch left nothing behind
    with Live(event_store, database_url, batch_size=8) as live:
        live.wait(head)
    after_restart = {name: snapshot(database_url, name) for name in READ_MODELS}
    assert len(after_restart["users"]) == 12
    for name in READ_MODELS:
        rebuild(event_store, database_url, name, batch_size=5)
        assert snapshot(database_url, name) == after_restart[name]


@contextmanager
def connection(conninfo: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def test_registration_of_an_already_erased_user_is_tolerated(event_store: EventStore, database_url: str) -> None:
    """Projected only after the key is gone, the user's events decode `[erased]`; the row still lands."""
    seeded = seed_user(event_store, email="gone@example.com", first="Gone", at=datetime.now().astimezone())
    later = Context(now=datetime.now().astimezone() + timedelta(seconds=1))
    user = event_store.load(seeded.id, user_agg.project)
    assert user is not None
    position = event_store.append(user_agg.erase(user, ctx=later), cred.erase_credentials(seeded.id))
    event_store.keys.forget(seeded.id)
    project_to_head(event_store, database_url)
    with connection(database_url) as conn:
        row = conn.execute("SELECT email, first_name, erased_at, position FROM users").fetchone()
    assert row == {"email": None, "first_name": ev.ERASED, "erased_at": later.now, "position": position}

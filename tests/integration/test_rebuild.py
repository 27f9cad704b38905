"""Rebuilds: a rebuilt read model equals the live one, whatever the history, and the swap loses nothing.

The property test drives random sequences of the real commands (a fresh database per example), runs the live
projections to the head, then rebuilds from position 0 and compares the full contents of both read models.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any
from unittest import mock

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pandora_users.commands import account, admin, links, registration
from pandora_users.commands import authentication as auth
from pandora_users.commands import sessions as session_cmds
from pandora_users.commands.base import WriteSide
from pandora_users.domain import events as ev
from pandora_users.domain import link as link_agg
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.domain.errors import DomainError
from pandora_users.store.app import EventStore, postgres_env
from projections import rebuild as rebuild_module
from projections import users as users_projection
from projections.rebuild import RebuildInProgress, rebuild, rebuild_all, rebuild_name
from projections.registry import READ_MODELS
from projections.runner import lock_id, read_tracking
from projections.users import TOPICS as USERS_TOPICS
from tests.conftest import TEST_KEK, _admin, _with_db, make_write_side
from tests.integration.test_read_models import (
    ADMIN,
    Live,
    project_to_head,
    seed_many,
    seed_user,
    snapshot,
    tables,
)
from tests.integration.test_registration import PASSWORD

ACTIONS = (
    "register",
    "profile",
    "kyc",
    "resubmit",
    "role",
    "delete",
    "restore",
    "erase",
    "lock",
    "unlock",
    "login",
    "logout",
    "logout_all",
    "reset",
    "verify",
)
NAMES = ("Ann", "Zoë", "O'Neil", "50%_off", "back\\slash")
KYC = ("pending", "verified", "rejected")


@asynccontextmanager
async def fresh_write_side(server_url: str, template_db: str) -> AsyncIterator[tuple[WriteSide, str]]:
    """A write side on a database of its own (hypothesis runs many examples in one test)."""
    name = f"pandora_h_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = _with_db(server_url, name)
    store = EventStore(postgres_env(url, pool_size=4, max_overflow=16, lock_timeout=5), TEST_KEK)
    w = make_write_side(store, session_max_per_user=3)
    hasher = w.hasher
    try:
        yield w, url
    finally:
        w.close()
        hasher.close()
        store.close()
        with _admin(server_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _latest_link_token(store: EventStore, user_id: uuid.UUID, purpose: str) -> str | None:
    stored = store.recorder.select_events(link_agg.link_id(user_id, purpose), desc=True, limit=1)
    if not stored:
        return None
    token = getattr(store.decode(stored[0]), "token", None)
    return token if isinstance(token, str) else None


class Scenario:
    """Runs one random action against the real commands; domain refusals are part of the game."""

    def __init__(self, w: WriteSide) -> None:
        self.w = w
        self.users: list[uuid.UUID] = []
        self.emails: dict[uuid.UUID, str] = {}
        self.passwords: dict[uuid.UUID, str] = {}
        self.refresh: dict[uuid.UUID, list[str]] = {}
        self.registered = 0

    async def play(self, action: str, pick: int, name: str) -> None:
        if action == "register" or not self.users:
            await self._register(pick, name)
            return
        user_id = self.users[pick % len(self.users)]
        with suppress(DomainError):
            await getattr(self, f"_{action}")(user_id, pick, name)

    async def _register(self, pick: int, name: str) -> None:
        email = f"user{pick % 4}@example.com"  # collisions happen; an erased user's email is free again
        registration_ = registration.Registration(email, PASSWORD, name, "Lee", "203.0.113.9", "hypothesis")
        try:
            grant = await registration.register(self.w, registration_, Context())
        except DomainError:
            return
        self.users.append(grant.user.id)
        self.emails[grant.user.id] = email
        self.passwords[grant.user.id] = PASSWORD
        self.refresh[grant.user.id] = [grant.refresh_token]

    async def _profile(self, user_id: uuid.UUID, pick: int, name: str) -> None:
        first, last = (name, None) if pick % 2 else (None, name)
        await account.update_profile(self.w, user_id, first_name=first, last_name=last, if_match=None, ctx=Context())

    async def _kyc(self, user_id: uuid.UUID, pick: int, _: str) -> None:
        await admin.change_kyc(self.w, user_id, KYC[pick % 3], if_match=None, ctx=ADMIN.with_reason("checked"))

    async def _resubmit(self, user_id: uuid.UUID, *_: object) -> None:
        await account.resubmit_kyc(self.w, user_id, "pending", Context())

    async def _role(self, user_id: uuid.UUID, pick: int, _: str) -> None:
        await admin.change_role(self.w, user_id, ("user", "admin")[pick % 2], if_match=None, ctx=ADMIN)

    async def _delete(self, user_id: uuid.UUID, *_: object) -> None:
        await account.delete_user(self.w, user_id, if_match=None, ctx=ADMIN, must_be_live=False)

    async def _restore(self, user_id: uuid.UUID, *_: object) -> None:
        await admin.restore(self.w, user_id, if_match=None, ctx=ADMIN)

    async def _erase(self, user_id: uuid.UUID, *_: object) -> None:
        await admin.erase(self.w, user_id, if_match=None, ctx=ADMIN.with_reason("gdpr request"))

    async def _lock(self, user_id: uuid.UUID, *_: object) -> None:
        for _attempt in range(3):
            with suppress(DomainError):
                await auth.log_in(self.w, auth.LoginAttempt(self.emails[user_id], "not the password"), Context())

    async def _unlock(self, user_id: uuid.UUID, *_: object) -> None:
        await admin.unlock(self.w, user_id, if_match=None, ctx=ADMIN)

    async def _login(self, user_id: uuid.UUID, pick: int, _: str) -> None:
        audience = "pandora-admin" if pick % 3 == 0 else "pandora-api"
        attempt = auth.LoginAttempt(self.emails[user_id], self.passwords[user_id], audience, "198.51.100.1", "ua")
        outcome = await auth.log_in(self.w, attempt, Context())
        self.refresh[user_id].append(outcome.grant.refresh_token)

    async def _logout(self, user_id: uuid.UUID, *_: object) -> None:
        if self.refresh[user_id]:
            await session_cmds.log_out(self.w, user_id, self.refresh[user_id].pop(), Context())

    async def _logout_all(self, user_id: uuid.UUID, *_: object) -> None:
        await session_cmds.log_out_all(self.w, user_id, Context())

    async def _reset(self, user_id: uuid.UUID, pick: int, _: str) -> None:
        await links.forgot_password(self.w, self.emails[user_id], Context())
        token = _latest_link_token(self.w.store, user_id, "password_reset")
        if token is not None:
            new_password = f"{PASSWORD} {pick}"
            await links.reset_password(self.w, token, new_password, Context())
            self.passwords[user_id] = new_password

    async def _verify(self, user_id: uuid.UUID, *_: object) -> None:
        token = _latest_link_token(self.w.store, user_id, "email_verification")
        if token is not None:
            await links.verify_email(self.w, token, Context())


def contents(url: str) -> dict[str, list[dict[str, Any]]]:
    return {name: snapshot(url, name) for name in READ_MODELS}


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(ACTIONS), st.integers(0, 11), st.sampled_from(NAMES)), min_size=3, max_size=16
    ),
    live_batch=st.integers(1, 40),
    rebuild_batch=st.integers(1, 60),
    copy=st.booleans(),
)
async def test_a_rebuild_from_zero_equals_the_live_read_models(
    server_url: str,
    template_db: str,
    steps: list[tuple[str, int, str]],
    live_batch: int,
    rebuild_batch: int,
    copy: bool,
) -> None:
    """The live projection INSERTs new users (its batches are small); the rebuild COPYs them when `copy`
    (as it does from COPY_FROM new users a batch) and INSERTs them otherwise: the same rows either way."""
    async with fresh_write_side(server_url, template_db) as (w, url):
        scenario = Scenario(w)
        for action, pick, name in steps:
            await scenario.play(action, pick, name)
        with Live(w.store, url, batch_size=live_batch) as live:
            live.wait()
        live_contents = contents(url)
        assert len(live_contents["users"]) == len(scenario.users)
        with mock.patch.object(users_projection, "COPY_FROM", 1 if copy else users_projection.COPY_FROM):
            reports = rebuild_all(w.store, url, batch_size=rebuild_batch, kek=TEST_KEK)
        assert contents(url) == live_contents
        for report in reports:
            assert tables(url, report.name) == (f"{report.name}_v2", [f"{report.name}_v2"])
            assert report.position == w.store.head_position()


def _published_positions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT notification_id FROM pandora_events WHERE topic = ANY(%s) ORDER BY notification_id",
            (list(ev.PUBLISHED_TOPICS),),
        ).fetchall()
    return [r[0] for r in rows]


def _user_versions(url: str) -> tuple[dict[uuid.UUID, int], dict[uuid.UUID, int]]:
    """(versions in the event store, versions in the users read model)."""
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT originator_id, max(originator_version) FROM pandora_events WHERE topic = ANY(%s)"
            " GROUP BY originator_id",
            (list(USERS_TOPICS),),
        ).fetchall()
        projected = conn.execute("SELECT id, version FROM users").fetchall()
    return dict(stored), dict(projected)


class Writer(threading.Thread):
    """Keeps appending realistic events (new users, KYC changes) until stopped."""

    def __init__(self, store: EventStore) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.stopping = threading.Event()
        self.written = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            seeded = seed_user(self.store, email=f"w{uuid.uuid4().hex[:10]}@example.com", kyc="verified")
            user = self.store.load(seeded.id, user_agg.project)
            assert user is not None
            self.store.append(user_agg.change_role(user, "admin", ctx=Context()))
            self.written += 1


def test_rebuild_while_live_projections_run_and_writers_write(event_store: EventStore, database_url: str) -> None:
    seed_many(event_store, 1500)
    with Live(event_store, database_url, batch_size=20) as live:
        live.wait()
        writer = Writer(event_store)
        writer.start()
        try:
            time.sleep(0.2)
            before = writer.written
            reports = rebuild_all(event_store, database_url, batch_size=400, kek=TEST_KEK)
            during = writer.written - before
        finally:
            writer.stopping.set()
            writer.join(10)
        live.wait()
    assert during > 0  # the writers really wrote while the rebuild ran
    for report in reports:
        assert tables(database_url, report.name) == (f"{report.name}_v2", [f"{report.name}_v2"])
    swapped = {name: snapshot(database_url, name) for name in READ_MODELS}
    assert [row["position"] for row in swapped["event_log"]] == _published_positions(database_url)
    stored, projected = _user_versions(database_url)
    assert projected == stored  # every user, at its latest version: nothing lost, nothing doubled
    rebuild_all(event_store, database_url, batch_size=1000, kek=TEST_KEK)
    assert {name: snapshot(database_url, name) for name in READ_MODELS} == swapped


def _epoch(url: str, name: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        tracking = read_tracking(conn, name)
    return tracking.position, tracking.epoch


@pytest.mark.parametrize("name", READ_MODELS)
def test_swap_applies_what_the_live_projection_got_ahead_with(
    event_store: EventStore, database_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(10):
        seed_user(event_store, email=f"a{i}@example.com", kyc="rejected")
    project_to_head(event_store, database_url, [name])
    real_swap = rebuild_module._swap

    def late_events_then_swap(*args: Any) -> tuple[int, int]:
        for i in range(5):  # written after the rebuild caught up; only the live projection has them
            seed_user(event_store, email=f"late{i}@example.com", role="admin")
        project_to_head(event_store, database_url, [name])
        return real_swap(*args)

    monkeypatch.setattr(rebuild_module, "_swap", late_events_then_swap)
    _, epoch = _epoch(database_url, name)
    report = rebuild(event_store, database_url, name, batch_size=7)
    head = event_store.head_position()
    assert report.position == head and _epoch(database_url, name) == (head, epoch + 1)
    rows = snapshot(database_url, name)
    assert len(rows) == (15 if name == "users" else len(_published_positions(database_url)))
    monkeypatch.undo()
    rebuild(event_store, database_url, name, batch_size=1000, kek=TEST_KEK)
    assert snapshot(database_url, name) == rows


def test_swap_moves_a_lagging_live_position_up_to_the_rebuilt_table(event_store: EventStore, database_url: str) -> None:
    for i in range(6):
        seed_user(event_store, email=f"b{i}@example.com")
    assert _epoch(database_url, "users") == (0, 0)  # the live projection never ran
    report = rebuild(event_store, database_url, "users")
    assert _epoch(database_url, "users") == (report.position, 1)
    assert len(snapshot(database_url, "users")) == 6
    with Live(event_store, database_url) as live:  # it goes on from there, on the new table
        seed_user(event_store, email="after@example.com")
        live.wait()
    assert len(snapshot(database_url, "users")) == 7
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM users_v2").fetchone() == (7,)
        assert read_tracking(conn, rebuild_name("users")).position == 0  # its tracking row is gone


def test_leftovers_are_dropped_and_a_concurrent_rebuild_is_refused(event_store: EventStore, database_url: str) -> None:
    seed_user(event_store, email="c@example.com")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users_v2 (LIKE users_v1 INCLUDING ALL)")  # an interrupted rebuild's table
        conn.execute("INSERT INTO projection_positions (name, position) VALUES ('users#rebuild', 99)")
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_id(rebuild_name("users")),))
        with pytest.raises(RebuildInProgress):
            rebuild(event_store, database_url, "users")
        conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id(rebuild_name("users")),))
    report = rebuild(event_store, database_url, "users")
    assert (report.new_table, report.events) == ("users_v2", 1)
    assert tables(database_url, "users") == ("users_v2", ["users_v2"])
    with psycopg.connect(database_url) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'users_v2'")}
        registry = conn.execute("SELECT active_table, version FROM read_model_tables WHERE name = 'users'").fetchone()
    assert registry == ("users_v2", 2)
    assert indexes == {
        "users_v2_pkey",
        "users_v2_created_idx",
        "users_v2_live_created_idx",
        "users_v2_kyc_created_idx",
        "users_v2_role_created_idx",
        "users_v2_email_idx",
        "users_v2_search_trgm_idx",
    }


def test_rebuild_throughput_and_progress(event_store: EventStore, database_url: str) -> None:
    """Measures events/s of the batched path (the figure is printed; the floor only catches a collapse)."""
    head = seed_many(event_store, 2500)
    seen: list[int] = []
    reports = rebuild_all(
        event_store, database_url, batch_size=5000, progress_callback=lambda p: seen.append(p.position), kek=TEST_KEK
    )
    for report in reports:
        rate = f"{report.events_per_second:.0f}/s"
        print(f"rebuild {report.name}: {report.events} events in {report.seconds:.2f} s = {rate}")
        assert report.position == head and report.events == head
        assert report.events_per_second > 1000
    assert seen[-1] == head

"""The forwarder on real PostgreSQL and Redis: order, exactly once, resume, stream ahead, erasure (SPEC §8)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis

from pandora_users.commands import account, admin, links, registration, sessions
from pandora_users.commands import authentication as auth
from pandora_users.commands.authentication import LoginAttempt, RefreshAttempt
from pandora_users.commands.base import WriteSide
from pandora_users.commands.registration import Registration
from pandora_users.domain import events as ev
from pandora_users.domain.context import Context
from pandora_users.domain.errors import AccountLocked, InvalidCredentials, InvalidRefreshToken
from pandora_users.store.app import EventStore
from projections.forwarder import ForwarderProjection, RedisUnavailable, connect
from projections.integration_events import BY_TYPE, to_entry
from projections.runner import Envelope, Runner, wait_until
from tests.e2e.procs import free_port

PASSWORD = "Zq8!vT3#pL9@wX-forwarder"
NEW_PASSWORD = "another Zq8!vT3#pL9@wX passphrase"
META = {
    "actor_role": "user",
    "request_id": "req-forwarder",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "ip_address": "203.0.113.9",
    "user_agent": "pytest-forwarder",
}


def ctx(**extra: str) -> Context:
    return Context(metadata={**META, **extra})


def _link_token(store: EventStore, cls: type[ev.DomainEvent]) -> str:
    with store.datastore.get_connection() as conn:
        row = conn.execute(
            "SELECT max(notification_id) AS n FROM pandora_events WHERE topic = %s", (cls.TOPIC,)
        ).fetchone()
    (notification,) = store.recorder.select_notifications(row["n"], 1)
    return str(store.decode(notification).token)  # type: ignore[attr-defined]


async def _login(w: WriteSide, email: str, password: str = PASSWORD) -> str:
    return (await auth.log_in(w, LoginAttempt(email, password, ip_address="203.0.113.9"), ctx())).grant.refresh_token


async def user_life(w: WriteSide, email: str) -> uuid.UUID:
    """One user through every published event type except `user.erased` (SPEC §8.3)."""
    grant = await registration.register(w, Registration(email, PASSWORD, "Ann", "Lee", "203.0.113.9", "ua"), ctx())
    uid = grant.user.id
    await links.resend_verification(w, uid, ctx())
    await links.verify_email(w, _link_token(w.store, ev.LinkEmailVerificationRequested), ctx())
    await auth.refresh(w, RefreshAttempt(grant.refresh_token), ctx())
    with pytest.raises(InvalidRefreshToken):  # reuse: token_reuse_detected + session.revoked
        await auth.refresh(w, RefreshAttempt(grant.refresh_token), ctx())
    await account.update_profile(w, uid, first_name="Anna", last_name=None, if_match=None, ctx=ctx())
    await admin.change_kyc(w, uid, "verified", if_match=None, ctx=ctx(reason="documents checked"))
    for _ in range(3):
        with pytest.raises((InvalidCredentials, AccountLocked)):
            await _login(w, email, "wrong password!")
    await admin.unlock(w, uid, if_match=None, ctx=ctx())
    await _login(w, email)
    await links.forgot_password(w, email, ctx())
    await links.reset_password(w, _link_token(w.store, ev.LinkPasswordResetRequested), NEW_PASSWORD, ctx())
    await sessions.log_out(w, uid, await _login(w, email, NEW_PASSWORD), ctx())
    await _login(w, email, NEW_PASSWORD)
    await sessions.log_out_all(w, uid, ctx())
    await _login(w, email, NEW_PASSWORD)
    await admin.change_role(w, uid, "admin", if_match=None, ctx=ctx())
    await _login(w, email, NEW_PASSWORD)
    await account.delete_user(w, uid, if_match=None, ctx=ctx(), must_be_live=False)
    await admin.restore(w, uid, if_match=None, ctx=ctx())
    await _login(w, email, NEW_PASSWORD)
    return uid


@pytest.fixture
def stream(redis_url: str) -> Iterator[str]:
    name = f"test-forwarder-{uuid.uuid4().hex[:10]}:events"
    yield name
    redis.Redis.from_url(redis_url).delete(name)


def entries(redis_url: str, name: str) -> list[tuple[str, dict[str, str]]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    found: list[tuple[str, dict[str, str]]] = client.xrange(name)  # type: ignore[assignment]
    return [(entry_id, fields) for entry_id, fields in found]


def expected(store: EventStore, now: datetime | None = None) -> list[tuple[str, dict[str, str]]]:
    """What the stream must hold: every published event of the store, as mapped now."""
    out = []
    for n in store.recorder.select_notifications(1, 100_000):
        entry = to_entry(n.id, store.decode(n), now or datetime.now(UTC))
        if entry is not None:
            out.append((f"{n.id}-0", entry.fields()))
    return out


def expected_until(store: EventStore, position: int) -> list[Any]:
    return [e for e in expected(store) if int(e[0].split("-")[0]) <= position]


def start(store: EventStore, url: str, projection: ForwarderProjection) -> tuple[Runner, threading.Thread]:
    runner = Runner(store, url, projection, batch_size=50, idle_poll=0.1)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return runner, thread


def stop(runner: Runner, thread: threading.Thread) -> None:
    runner.stop()
    runner.projection.stop()  # type: ignore[attr-defined]
    thread.join(10)
    assert not thread.is_alive()


def forwarder(redis_url: str, stream: str, **options: Any) -> ForwarderProjection:
    return ForwarderProjection(connect(redis_url), stream, 100_000, **options)


def parked(url: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT position FROM projection_failures").fetchall()


async def test_a_user_life_is_published_once_in_order_then_erased(
    write_side: WriteSide, event_store: EventStore, database_url: str, redis_url: str, stream: str
) -> None:
    projection = forwarder(redis_url, stream)
    runner, thread = start(event_store, database_url, projection)
    uid = await user_life(write_side, "ann@example.com")
    bystander = await registration.register(write_side, Registration("bob@example.com", PASSWORD, "B", "O"), ctx())
    assert wait_until(event_store, runner, event_store.head_position())
    published = entries(redis_url, stream)
    assert published == expected(event_store)
    types = {fields["event_type"] for _, fields in published}
    assert types == set(BY_TYPE) - {"user.erased"}
    assert all(not t.startswith("email_index") for t in types)
    positions = [int(entry_id.split("-")[0]) for entry_id, _ in published]
    internal = [n.id for n in event_store.recorder.select_notifications(1, 1000) if n.topic.startswith("pandora.email")]
    assert positions == sorted(positions) and not set(positions) & set(internal)
    assert json.loads(published[0][1]["metadata"])["traceparent"] == META["traceparent"]
    assert projection.stats.ok == len(published) and projection.stats.duplicate == 0

    _user, written = await admin.erase(write_side, uid, if_match=None, ctx=ctx(actor_role="admin"))
    assert written.position is not None and wait_until(event_store, runner, event_store.head_position())
    stop(runner, thread)
    after = entries(redis_url, stream)
    mine = [(i, f["event_type"]) for i, f in after if f["user_id"] == str(uid)]
    assert [t for _, t in mine] == ["user.erased"]  # the user.session.revoked before it were deleted too
    assert [f for _, f in after if f["user_id"] == str(bystander.user.id)] == [
        f for _, f in published if f["user_id"] == str(bystander.user.id)
    ]
    everything_of_user = [f for _, f in expected(event_store) if f["user_id"] == str(uid)]
    assert projection.stats.deleted == len(everything_of_user) - 1
    # Anything of the user published from now on (lag, StreamEvents) is shredded and carries no link token.
    for _, fields in expected(event_store):
        if fields["user_id"] == str(uid):
            assert "ann@example.com" not in fields["payload"] + fields["metadata"]
            assert "token" not in json.loads(fields["payload"])
    assert parked(database_url) == []


async def test_resume_after_a_restart_and_after_a_crash_between_xadd_and_commit(
    write_side: WriteSide, event_store: EventStore, database_url: str, redis_url: str, stream: str
) -> None:
    for i in range(3):
        await registration.register(write_side, Registration(f"u{i}@example.com", PASSWORD, "U", "V"), ctx())
    runner, thread = start(event_store, database_url, forwarder(redis_url, stream))
    assert wait_until(event_store, runner, event_store.head_position())
    stop(runner, thread)
    first = event_store.head_position()
    for i in range(3, 6):
        await registration.register(write_side, Registration(f"u{i}@example.com", PASSWORD, "U", "V"), ctx())
    # A forwarder that crashed after its XADDs, before its position committed: the events are in the stream.
    crashed = forwarder(redis_url, stream)
    notifications = event_store.recorder.select_notifications(first + 1, 1000)
    with psycopg.connect(database_url) as conn:
        crashed.apply(conn, [Envelope(n.id, event_store.decode(n)) for n in notifications])
    resent = crashed.stats.ok
    assert resent > 0
    for i in range(6, 8):
        await registration.register(write_side, Registration(f"u{i}@example.com", PASSWORD, "U", "V"), ctx())
    restarted = forwarder(redis_url, stream)
    runner, thread = start(event_store, database_url, restarted)
    assert wait_until(event_store, runner, event_store.head_position())
    stop(runner, thread)
    assert entries(redis_url, stream) == expected(event_store)
    assert restarted.stats.duplicate == resent
    assert restarted.stats.ok == len(expected(event_store)) - crashed.stats.ok - len(expected_until(event_store, first))


async def test_a_stale_checkpoint_meets_redis_duplicate_errors_and_adds_only_new_entries(
    write_side: WriteSide, event_store: EventStore, database_url: str, redis_url: str, stream: str
) -> None:
    for i in range(4):
        await registration.register(write_side, Registration(f"d{i}@example.com", PASSWORD, "D", "E"), ctx())
    batch = [Envelope(n.id, event_store.decode(n)) for n in event_store.recorder.select_notifications(1, 1000)]
    half = len(batch) // 2
    with psycopg.connect(database_url) as conn:
        forwarder(redis_url, stream).apply(conn, batch[:half])
        zombie = forwarder(redis_url, stream)
        zombie._checkpoint = 0  # as if it had read the stream before the other instance wrote
        zombie.apply(conn, batch)
    assert entries(redis_url, stream) == expected(event_store)
    published_first = len([e for e in batch[:half] if to_entry(e.position, e.event, datetime.now(UTC))])
    assert zombie.stats.duplicate == published_first
    assert zombie.stats.ok == len(expected(event_store)) - published_first


async def test_a_stream_ahead_of_the_tracked_position_is_not_published_again(
    write_side: WriteSide, event_store: EventStore, database_url: str, redis_url: str, stream: str
) -> None:
    for i in range(4):
        await registration.register(write_side, Registration(f"a{i}@example.com", PASSWORD, "A", "B"), ctx())
    runner, thread = start(event_store, database_url, forwarder(redis_url, stream))
    assert wait_until(event_store, runner, event_store.head_position())
    stop(runner, thread)
    before = entries(redis_url, stream)
    client = redis.Redis.from_url(redis_url)
    client.xdel(stream, before[0][0])  # trimmed or deleted entries must not come back either
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE projection_positions SET position = 0 WHERE name = 'forwarder'")
    again = forwarder(redis_url, stream)
    runner, thread = start(event_store, database_url, again)
    assert wait_until(event_store, runner, event_store.head_position())
    stop(runner, thread)
    assert entries(redis_url, stream) == before[1:]
    assert again.stats.ok == 0 and again.stats.duplicate == len(before)


def test_redis_unreachable_rolls_the_batch_back_without_parking(event_store: EventStore, database_url: str) -> None:
    from pandora_users.domain import session as session_agg
    from pandora_users.store import credentials as cred

    user_id = uuid.uuid4()
    _key, wrapped = event_store.keys.new_key(user_id)
    login = session_agg.log_in(
        uuid.uuid4(),
        user_id=user_id,
        email="c@d.co",
        audience="pandora-api",
        expires_at=datetime.now(UTC),
        ip_address=None,
        user_agent=None,
        ctx=ctx(),
    )
    position = event_store.append([login], [cred.put_data_key(user_id, wrapped)])
    projection = ForwarderProjection(connect(f"redis://127.0.0.1:{free_port()}/0"), "nowhere", 100, patience=0.5)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable), psycopg.connect(database_url) as conn:
        projection.apply(conn, [Envelope(position or 0, login)])
    assert 0.3 < time.monotonic() - started < 3
    runner, thread = start(event_store, database_url, projection)
    time.sleep(1.5)
    projection.stopping.set()
    stopped = time.monotonic()
    runner.stop()
    thread.join(10)
    assert time.monotonic() - stopped < 2 and not thread.is_alive()
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT position FROM projection_positions WHERE name = 'forwarder'").fetchone()
    assert row is None or row[0] == 0
    assert parked(database_url) == []
    assert projection.retry.errors >= 2

"""Revoked-session entries on real Redis: the projector's replay and the commands' after-commit write (SPEC §6.6)."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from redis import asyncio as aioredis

from pandora_users.commands import account, admin, registration, sessions
from pandora_users.commands import authentication as auth
from pandora_users.commands.authentication import LoginAttempt, RefreshAttempt
from pandora_users.commands.base import EndedSession, WriteSide
from pandora_users.commands.registration import Registration
from pandora_users.domain import events as ev
from pandora_users.domain.context import Context
from pandora_users.domain.errors import InvalidRefreshToken
from pandora_users.store.app import EventStore
from projections.forwarder import connect
from projections.revocations import RevocationsProjection, is_revoked, record_revocations, revocation_key
from projections.runner import Runner, wait_until
from tests.integration.test_forwarder import PASSWORD

TTL = 900.0


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    value = f"test-revocations-{uuid.uuid4().hex[:10]}:"
    yield value
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=value + "*"):
        client.delete(key)


async def _login(w: WriteSide, email: str) -> auth.LoginOutcome:
    return await auth.log_in(w, LoginAttempt(email, PASSWORD), Context())


async def _sessions_ending_every_way(w: WriteSide) -> dict[str, str]:
    """Sessions ended by each kind of event; returns session id -> expected reason class ('' = skipped)."""
    first = await registration.register(w, Registration("r@example.com", PASSWORD, "R", "S"), Context())
    uid = first.user.id
    out = await _login(w, "r@example.com")
    await sessions.log_out(w, uid, out.grant.refresh_token, Context())
    own = await _login(w, "r@example.com")
    await sessions.revoke_own_session(w, uid, own.grant.session_id, Context())
    await auth.refresh(w, RefreshAttempt(first.refresh_token), Context())
    with pytest.raises(InvalidRefreshToken):
        await auth.refresh(w, RefreshAttempt(first.refresh_token), Context())
    old = await _login(w, "r@example.com")
    long_ago = Context(now=datetime.now(UTC) - timedelta(seconds=TTL + 61))
    await sessions.revoke_session(w, old.grant.session_id, "admin_revoked", long_ago)
    deleted = await _login(w, "r@example.com")
    await account.delete_user(w, uid, if_match=None, ctx=Context(), must_be_live=True)
    other = await registration.register(w, Registration("e@example.com", PASSWORD, "E", "F"), Context())
    await admin.erase(w, other.user.id, if_match=None, ctx=Context())
    return {
        str(out.grant.session_id): "revoked",
        str(own.grant.session_id): "revoked",
        str(first.session_id): "revoked",
        str(old.grant.session_id): "",
        str(deleted.grant.session_id): "deleted",
        str(other.session_id): "deleted",
    }


def _ended_at(store: EventStore) -> dict[str, datetime]:
    found = {}
    for n in store.recorder.select_notifications(1, 10_000):
        event = store.decode(n)
        if isinstance(event, ev.SessionRevoked | ev.SessionLoggedOut):
            assert event.session_id not in found, "a session ends with exactly one terminal event"
            found[event.session_id] = event.timestamp
    return found


def _replay(store: EventStore, url: str, projection: RevocationsProjection) -> None:
    runner = Runner(store, url, projection, batch_size=4, idle_poll=0.1)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    assert wait_until(store, runner, store.head_position())
    runner.stop()
    thread.join(10)


async def test_the_projector_writes_each_ended_session_with_its_class_and_expiry(
    write_side: WriteSide, event_store: EventStore, database_url: str, redis_url: str, prefix: str
) -> None:
    classes = await _sessions_ending_every_way(write_side)
    ended_at = _ended_at(event_store)
    assert set(ended_at) == set(classes)
    projection = RevocationsProjection(connect(redis_url), prefix, TTL)
    _replay(event_store, database_url, projection)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for session_id, reason_class in classes.items():
        key = revocation_key(prefix, session_id)
        if not reason_class:
            assert not client.exists(key), "an entry whose lifetime has passed is not written"
            continue
        assert client.get(key) == reason_class
        expires_ms = math.ceil((ended_at[session_id] + timedelta(seconds=TTL + 60)).timestamp() * 1000)
        assert client.pexpiretime(key) == expires_ms
    assert projection.written == 5

    # Idempotent replay: an entry lost while Redis was down comes back, the others are unchanged.
    snapshot = {k: (client.get(k), client.pexpiretime(k)) for k in client.scan_iter(match=prefix + "*")}
    lost = next(iter(snapshot))
    client.delete(lost)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE projection_positions SET position = 0 WHERE name = 'revocations'")
    _replay(event_store, database_url, RevocationsProjection(connect(redis_url), prefix, TTL))
    assert {k: (client.get(k), client.pexpiretime(k)) for k in client.scan_iter(match=prefix + "*")} == snapshot


async def test_commands_record_entries_and_the_check_reads_them(redis_url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)  # bytes responses, as an API client may use
    try:
        user = uuid.uuid4()
        ended = [
            EndedSession(uuid.uuid4(), user, "logout_all"),
            EndedSession(uuid.uuid4(), user, "account_deleted"),
            EndedSession(uuid.uuid4(), user, "account_erased"),
            EndedSession(uuid.uuid4(), user, "logged_out"),
        ]
        await record_revocations(client, prefix, TTL, ended)
        assert [await is_revoked(client, prefix, s.session_id) for s in ended] == [
            "revoked",
            "deleted",
            "deleted",
            "revoked",
        ]
        assert await is_revoked(client, prefix, uuid.uuid4()) is None
        ttl_ms = await client.pttl(revocation_key(prefix, ended[0].session_id))
        assert (TTL + 59) * 1000 < ttl_ms <= (TTL + 60) * 1000
        await record_revocations(client, prefix, TTL, ended[:1])  # again: same entry, same class
        assert await is_revoked(client, prefix, str(ended[0].session_id)) == "revoked"
        await record_revocations(client, prefix, TTL, [])
    finally:
        await client.aclose()


async def test_the_check_raises_when_redis_is_unreachable(prefix: str) -> None:
    from tests.e2e.procs import free_port

    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        with pytest.raises(redis.ConnectionError):
            await is_revoked(client, prefix, uuid.uuid4())
        with pytest.raises(redis.ConnectionError):
            await record_revocations(client, prefix, TTL, [EndedSession(uuid.uuid4(), uuid.uuid4(), "logout_all")])
    finally:
        await client.aclose()


async def test_liveness_and_the_actors_mark_in_one_lookup_with_a_postgres_fallback(
    write_side: WriteSide, database_url: str, redis_url: str, prefix: str
) -> None:
    import asyncpg

    from api.consistency import Consistency
    from api.revocation import SessionLiveness
    from tests.e2e.procs import free_port

    grant = await registration.register(
        write_side, Registration("mark@example.com", PASSWORD, "Ann", "Lee", None, None), Context()
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    live = aioredis.Redis.from_url(redis_url)
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        marks = Consistency(pool, live, prefix=prefix, timeout=1)
        await marks.remember(str(grant.user.id), 42)
        liveness = SessionLiveness(live, pool, prefix=prefix, access_ttl=TTL, mark_key=marks.mark_key)
        assert await liveness.state_and_mark(grant.session_id, str(grant.user.id)) == (None, 42)
        assert await liveness.state_and_mark(grant.session_id, str(uuid.uuid4())) == (None, 0)
        await record_revocations(live, prefix, TTL, [EndedSession(grant.session_id, grant.user.id, "logout_all")])
        assert await liveness.state_and_mark(grant.session_id, str(grant.user.id)) == ("revoked", 42)
        # Redis unreachable: PostgreSQL answers for the session (live: nothing ended it there), the mark is unknown.
        fallback = SessionLiveness(dead, pool, prefix=prefix, access_ttl=TTL, mark_key=marks.mark_key)
        assert await fallback.state_and_mark(grant.session_id, str(grant.user.id)) == (None, None)
    finally:
        await pool.close()
        await live.aclose()
        await dead.aclose()

"""Login, lockout, refresh rotation and reuse detection, logout: commands on real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from pandora_users.commands import account, admin, registration, sessions
from pandora_users.commands import authentication as auth
from pandora_users.commands.authentication import LoginAttempt, RefreshAttempt
from pandora_users.commands.base import WriteSide
from pandora_users.domain import events as ev
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.domain.errors import AccountLocked, InvalidCredentials, InvalidRefreshToken, ServiceBusy
from pandora_users.security.tokens import hash_opaque_token
from pandora_users.store import credentials as cred
from pandora_users.store.app import EventStore, postgres_env
from tests.conftest import TEST_KEK
from tests.integration.test_registration import PASSWORD, reg


async def _user(w: WriteSide, email: str = "ann@example.com") -> registration.SessionGrant:
    return await registration.register(w, reg(email), Context())


async def test_login_success_opens_a_session(write_side: WriteSide) -> None:
    await _user(write_side)
    outcome = await auth.log_in(
        write_side, LoginAttempt("ANN@example.com", PASSWORD, ip_address="192.0.2.1"), Context()
    )
    assert outcome.grant.user.email == "ann@example.com" and outcome.grant.audience == "pandora-api"


@pytest.mark.parametrize(
    "attempt",
    [
        LoginAttempt("ann@example.com", "wrong password!"),
        LoginAttempt("nobody@example.com", PASSWORD),
        LoginAttempt("not an email", PASSWORD),
        LoginAttempt("ann@example.com", ""),
        LoginAttempt("ann@example.com", "a\x00b"),
        LoginAttempt("ann@example.com", "x" * 129),
    ],
)
async def test_every_login_failure_is_the_same_error(write_side: WriteSide, attempt: LoginAttempt) -> None:
    await _user(write_side)
    with pytest.raises(InvalidCredentials) as info:
        await auth.log_in(write_side, attempt, Context())
    assert (info.value.code, info.value.message, info.value.extra) == (
        "invalid_credentials",
        "invalid email or password",
        {},
    )


async def test_non_admin_cannot_log_in_to_admin(write_side: WriteSide) -> None:
    await _user(write_side)
    with pytest.raises(InvalidCredentials):
        await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD, audience="pandora-admin"), Context())


async def test_lockout_after_threshold_and_user_locked_event(write_side: WriteSide, database_url: str) -> None:
    await _user(write_side)  # threshold 3 in the fixture
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            await auth.log_in(write_side, LoginAttempt("ann@example.com", "wrong password!"), Context())
    with pytest.raises(AccountLocked) as info:
        await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD), Context())
    assert 1 <= info.value.extra["retry_after_seconds"] <= 900
    with psycopg.connect(database_url) as conn:
        locked = conn.execute("SELECT count(*) FROM pandora_events WHERE topic = %s", (ev.UserLocked.TOPIC,)).fetchone()
    assert locked == (1,)


@pytest.mark.parametrize("email", ["ann@example.com", "ghost@example.com"])
async def test_shed_verifications_do_not_count_towards_the_lockout(
    write_side: WriteSide, database_url: str, monkeypatch: pytest.MonkeyPatch, email: str
) -> None:
    """A login the hashing pool refuses (503 service_busy) verified nothing: its reservation is given back."""
    await _user(write_side)

    async def shed(*_: object) -> None:
        raise ServiceBusy(extra={"retry_after_seconds": 1})

    with monkeypatch.context() as patch:
        patch.setattr(write_side.hasher, "verify", shed)
        patch.setattr(write_side.hasher, "verify_dummy", shed)
        for _ in range(10):  # far beyond the threshold of 3
            with pytest.raises(ServiceBusy):
                await auth.log_in(write_side, LoginAttempt(email, PASSWORD), Context())
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT failures, reserved, locked_until FROM login_failures").fetchall()
    assert all(row == (0, 0, None) for row in rows), rows
    if email == "ann@example.com":
        assert (await auth.log_in(write_side, LoginAttempt(email, PASSWORD), Context())).grant.user is not None


async def test_unknown_email_locks_too_without_events(write_side: WriteSide, database_url: str) -> None:
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            await auth.log_in(write_side, LoginAttempt("ghost@example.com", "whatever pass"), Context())
    with pytest.raises(AccountLocked):
        await auth.log_in(write_side, LoginAttempt("ghost@example.com", "whatever pass"), Context())
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM pandora_events").fetchone() == (0,)


async def test_parallel_guesses_never_exceed_the_threshold(write_side: WriteSide) -> None:
    await _user(write_side)
    calls = [auth.log_in(write_side, LoginAttempt("ann@example.com", "wrong password!"), Context()) for _ in range(12)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(isinstance(r, InvalidCredentials) for r in results) <= 3
    assert all(isinstance(r, (InvalidCredentials, AccountLocked)) for r in results)


async def test_refresh_rotates_and_reuse_revokes_the_family(write_side: WriteSide) -> None:
    grant = await _user(write_side)
    first = await auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context())
    assert first.session_id == grant.session_id and first.refresh_token != grant.refresh_token
    with pytest.raises(InvalidRefreshToken):  # the rotated token comes back: reuse
        await auth.refresh(write_side, RefreshAttempt(grant.refresh_token, ip_address="198.51.100.9"), Context())
    with pytest.raises(InvalidRefreshToken):  # and the newest one died with its session
        await auth.refresh(write_side, RefreshAttempt(first.refresh_token), Context())


async def test_two_concurrent_refreshes_exactly_one_wins(write_side: WriteSide) -> None:
    grant = await _user(write_side)
    results = await asyncio.gather(
        *(auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context()) for _ in range(2)),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["InvalidRefreshToken", "SessionGrant"]


async def test_refresh_of_other_audience_or_garbage_is_refused(write_side: WriteSide) -> None:
    grant = await _user(write_side)
    for attempt in (
        RefreshAttempt(grant.refresh_token, audience="pandora-admin"),
        RefreshAttempt("x" * 513),
        RefreshAttempt("nope"),
    ):
        with pytest.raises(InvalidRefreshToken):
            await auth.refresh(write_side, attempt, Context())
    await auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context())  # the refusals changed nothing


async def test_logout_needs_the_callers_current_token(write_side: WriteSide) -> None:
    ann, bob = await _user(write_side), await _user(write_side, "bob@example.com")
    with pytest.raises(InvalidRefreshToken):
        await sessions.log_out(write_side, bob.user.id, ann.refresh_token, Context())
    written = await sessions.log_out(write_side, ann.user.id, ann.refresh_token, Context())
    assert [e.reason for e in written.ended_sessions] == ["logged_out"]
    with pytest.raises(InvalidRefreshToken):
        await sessions.log_out(write_side, ann.user.id, ann.refresh_token, Context())


async def test_session_limit_ends_the_oldest(write_side: WriteSide) -> None:
    first = await _user(write_side)  # limit 5 in the fixture
    for _ in range(4):
        await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD), Context())
    outcome = await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD), Context())
    assert outcome.grant.position is not None
    with pytest.raises(InvalidRefreshToken):
        await auth.refresh(write_side, RefreshAttempt(first.refresh_token), Context())


async def test_logout_all_ends_everything_then_is_a_noop(write_side: WriteSide) -> None:
    grant = await _user(write_side)
    await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD, audience="pandora-api"), Context())
    written = await sessions.log_out_all(write_side, grant.user.id, Context())
    assert len(written.ended_sessions) == 2 and written.position is not None
    again = await sessions.log_out_all(write_side, grant.user.id, Context())
    assert again.position is None and again.ended_sessions == ()


def _count_user_loads(w: WriteSide, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every full load of a user's events by this write side (the user ids, in order)."""
    loads: list[object] = []
    load = w.store.load

    def counting(aggregate_id: Any, project: Any) -> Any:
        if project is user_agg.project:
            loads.append(aggregate_id)
        return load(aggregate_id, project)

    monkeypatch.setattr(w.store, "load", counting)
    return loads


async def test_refresh_of_an_idle_or_expired_session_is_refused_and_changes_nothing(
    write_side: WriteSide, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §6.4 step 2, decided inside the refresh statement: idle past SESSION_IDLE_TIMEOUT or past the session's
    absolute end, 401; a refresh within both rotates."""
    grant = await _user(write_side)
    opened, config = grant.auth_time, write_side.config
    for idle_timeout, late in ((600.0, opened + timedelta(seconds=601)), (0.0, grant.session_expires_at)):
        monkeypatch.setattr(write_side, "config", dataclasses.replace(config, session_idle_timeout=idle_timeout))
        with pytest.raises(InvalidRefreshToken):
            await auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context(now=late))
    row = cred.refresh_token_row(write_side.store.datastore, hash_opaque_token(grant.refresh_token))
    assert row is not None and row["generation"] == 0 and row["last_used_at"] == opened
    monkeypatch.setattr(write_side, "config", dataclasses.replace(config, session_idle_timeout=600.0))
    refreshed = await auth.refresh(
        write_side, RefreshAttempt(grant.refresh_token), Context(now=opened + timedelta(seconds=599))
    )
    assert refreshed.session_id == grant.session_id


async def test_refresh_serves_a_known_version_of_the_user_without_loading_it(
    write_side: WriteSide, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await _user(write_side)
    loads = _count_user_loads(write_side, monkeypatch)
    first = await auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context())
    second = await auth.refresh(write_side, RefreshAttempt(first.refresh_token), Context())
    assert loads == [grant.user.id] and second.user == first.user
    await account.update_profile(
        write_side, grant.user.id, first_name="Annette", last_name=None, if_match=None, ctx=Context()
    )
    third = await auth.refresh(write_side, RefreshAttempt(second.refresh_token), Context())
    assert loads == [grant.user.id]  # the command brought the held state forward: nothing loaded again
    assert (third.user.first_name, third.user.version) == ("Annette", first.user.version + 1)  # never stale


async def test_a_user_is_brought_forward_from_the_held_state(
    write_side: WriteSide, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading a user this process holds decodes only the events stored since, whoever stored them; an erasure
    drops the held state with the key, and the user loads as erased."""
    grant = await _user(write_side)
    store, user_id = write_side.store, grant.user.id
    decoded: list[str] = []
    to_domain_event = store.mapper.to_domain_event

    def counting(stored: Any) -> Any:
        decoded.append(stored.topic)
        return to_domain_event(stored)

    monkeypatch.setattr(store.mapper, "to_domain_event", counting)
    held = store.load_user(user_id, user_agg.project)
    assert held is not None and decoded == [ev.UserRegistered.TOPIC]
    other = EventStore(postgres_env(database_url, pool_size=1, max_overflow=2, lock_timeout=5), TEST_KEK)
    try:  # another process changes the user
        changed = other.load_user(user_id, user_agg.project)
        assert changed is not None
        other.append(list(user_agg.update_profile(changed, first_name="Annette", last_name=None, ctx=Context())))
    finally:
        other.close()
    decoded.clear()
    current = store.load_user(user_id, user_agg.project)
    assert current is not None and (current.first_name, current.version) == ("Annette", held.version + 1)
    assert decoded == [ev.UserProfileUpdated.TOPIC]
    decoded.clear()
    assert store.load_user(user_id, user_agg.project) == current and decoded == []
    await admin.erase(write_side, user_id, if_match=None, ctx=Context())
    erased = store.load_user(user_id, user_agg.project)
    assert erased is not None and erased.first_name == ev.ERASED and erased.erased_at is not None


async def test_a_session_its_user_may_no_longer_hold_is_refused_and_its_rotation_undone(
    write_side: WriteSide, database_url: str
) -> None:
    """Step 3 is decided after the one statement that rotates: a refusal there undoes the rotation, so nothing
    changes and the token is not taken for a reused one later. The session is one a deleted user still holds (a
    login that committed its session after the deletion ended the others)."""
    grant = await _user(write_side)
    await account.delete_user(write_side, grant.user.id, if_match=None, ctx=Context(), must_be_live=True)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE sessions SET ended_at = NULL, end_reason = NULL WHERE id = %s", (grant.session_id,))
        before = conn.execute("SELECT generation, last_used_at FROM sessions WHERE id = %s", (grant.session_id,))
        state = before.fetchone()
    for _ in range(2):
        with pytest.raises(InvalidRefreshToken):
            await auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context())
    with psycopg.connect(database_url) as conn:
        after = conn.execute(
            "SELECT generation, last_used_at, ended_at FROM sessions WHERE id = %s", [grant.session_id]
        )
        assert after.fetchone() == (*state, None)
        tokens = conn.execute("SELECT count(*) FROM refresh_tokens WHERE session_id = %s", (grant.session_id,))
        assert tokens.fetchone() == (1,)
        topic = ev.SessionTokenReuseDetected.TOPIC
        reuse = conn.execute("SELECT count(*) FROM pandora_events WHERE topic = %s", (topic,))
        assert reuse.fetchone() == (0,)


async def test_a_rotation_whose_user_fails_to_load_is_undone(
    write_side: WriteSide, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statement rotated, then loading the user failed: the new token reaches nobody, so the rotation is
    undone and the client's retry with the same token refreshes (it is not taken for a reuse)."""
    grant = await _user(write_side)
    write_side.store.recent_users.discard(grant.user.id)

    def lost(*_: Any) -> Any:
        raise psycopg.OperationalError("connection lost")

    with monkeypatch.context() as patch:
        patch.setattr(write_side.store, "load_user_at", lost)
        with pytest.raises(psycopg.OperationalError):
            await auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context())
    retried = await auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context())
    assert retried.session_id == grant.session_id
    row = cred.refresh_token_row(write_side.store.datastore, hash_opaque_token(retried.refresh_token))
    assert row is not None and row["generation"] == row["token_generation"] == 1 and row["ended_at"] is None


async def test_a_rotation_that_loses_the_session_row_decides_again_and_sees_the_reuse(
    write_side: WriteSide, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compare-and-set waits for a concurrent rotation holding the session row; once that commits, PostgreSQL
    re-checks the row and skips it while the statement's snapshot still shows the token as current. The next round
    sees it rotated: reuse, the session ends."""
    grant = await _user(write_side)
    statements: list[object] = []
    rotate = cred.rotate_refresh_token

    async def counted(*args: Any) -> Any:
        statements.append(args)
        return await rotate(*args)

    monkeypatch.setattr(cred, "rotate_refresh_token", counted)
    with psycopg.connect(database_url) as rival:
        rival.execute("UPDATE sessions SET generation = 1 WHERE id = %s", (grant.session_id,))
        rival.execute(
            "INSERT INTO refresh_tokens (token_hash, session_id, generation) VALUES (%s, %s, 1)",
            (hash_opaque_token("the rival's token"), grant.session_id),
        )
        refresh = asyncio.create_task(auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context()))
        with psycopg.connect(database_url, autocommit=True) as watch:
            for _ in range(500):
                waiting = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                if waiting.fetchone() != (0,) or refresh.done():
                    break
                await asyncio.sleep(0.01)
        assert not refresh.done()
        rival.commit()
        with pytest.raises(InvalidRefreshToken) as info:
            await refresh
    assert info.value.audit["reuse"] is True and len(statements) == 2
    row = cred.refresh_token_row(write_side.store.datastore, hash_opaque_token("the rival's token"))
    assert row is not None and row["generation"] == 1 and row["end_reason"] == "token_reuse"


async def test_an_erased_user_is_not_kept_in_memory(write_side: WriteSide) -> None:
    grant = await _user(write_side)
    refreshed = await auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context())
    recent = write_side.store.recent_users
    assert recent.get(grant.user.id, refreshed.user.version) == refreshed.user
    await admin.erase(write_side, grant.user.id, if_match=None, ctx=Context())
    assert recent.get(grant.user.id, refreshed.user.version) is None


def _during_the_password_check(w: WriteSide, monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Run `change` (a command) after login has found the account and before it opens the session."""
    verify = w.hasher.verify

    async def verify_then_change(*args: Any) -> Any:
        result = await verify(*args)
        await change()
        return result

    monkeypatch.setattr(w.hasher, "verify", verify_then_change)


def _sessions_of(database_url: str, user_id: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        query = "SELECT audience, end_reason FROM sessions WHERE user_id = %s ORDER BY created_at"
        return conn.execute(query, (user_id,)).fetchall()


@pytest.mark.parametrize("audience", ["pandora-api", "pandora-admin"])
async def test_a_login_racing_the_accounts_end_opens_no_session(
    write_side: WriteSide, database_url: str, monkeypatch: pytest.MonkeyPatch, audience: str
) -> None:
    """A deletion (public login) or demotion (admin login) committed while the password was being checked ends
    the user's sessions: the login's session must not open after it."""
    grant = await _user(write_side)
    user_id = grant.user.id
    if audience == "pandora-admin":
        await admin.change_role(write_side, user_id, "admin", if_match=None, ctx=Context())
        await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD, audience=audience), Context())

        async def change() -> object:
            return await admin.change_role(write_side, user_id, "user", if_match=None, ctx=Context())
    else:

        async def change() -> object:
            return await account.delete_user(write_side, user_id, if_match=None, ctx=Context(), must_be_live=True)

    _during_the_password_check(write_side, monkeypatch, change)
    before = len(_sessions_of(database_url, user_id))
    with pytest.raises(InvalidCredentials) as info:
        await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD, audience=audience), Context())
    assert info.value.audit["reason"] in {"user_changed", "not_admin"}
    after = _sessions_of(database_url, user_id)
    assert len(after) == before and all(reason is not None for _, reason in after)


async def test_a_login_racing_a_profile_change_opens_the_session_with_the_new_state(
    write_side: WriteSide, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await _user(write_side)
    user_id = grant.user.id

    async def change() -> object:
        return await account.update_profile(
            write_side, user_id, first_name="Annette", last_name=None, if_match=None, ctx=Context()
        )

    _during_the_password_check(write_side, monkeypatch, change)
    outcome = await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD), Context())
    assert (outcome.grant.user.first_name, outcome.grant.user.version) == ("Annette", grant.user.version + 1)
    assert _sessions_of(database_url, user_id)[-1] == ("pandora-api", None)
    await auth.refresh(write_side, RefreshAttempt(outcome.grant.refresh_token), Context())

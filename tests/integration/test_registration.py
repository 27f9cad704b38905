"""Registration, uniqueness and erasure through the commands, on real PostgreSQL."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from pandora_users.commands import admin, registration
from pandora_users.commands.base import WriteSide
from pandora_users.commands.registration import Registration
from pandora_users.domain import email_index
from pandora_users.domain import events as ev
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.domain.errors import InvalidRequest, UserAlreadyExists, WeakPassword
from tests.conftest import TEST_PEPPER

PASSWORD = "correct horse battery staple"


def reg(email: str = "Ann@Example.com") -> Registration:
    return Registration(
        email=email,
        password=PASSWORD,
        first_name=" Ann ",
        last_name="Lee",
        ip_address="203.0.113.7",
        user_agent="pytest",
    )


async def test_register_creates_user_session_and_verification_link(write_side: WriteSide, database_url: str) -> None:
    grant = await registration.register(write_side, reg(), Context())
    assert grant.user.email == "ann@example.com" and grant.user.first_name == "Ann"
    assert len(grant.refresh_token) == 43 and grant.position is not None
    with psycopg.connect(database_url) as conn:
        topics = [r[0] for r in conn.execute("SELECT topic FROM pandora_events ORDER BY notification_id")]
        sessions = conn.execute("SELECT user_id, audience, ip_address FROM sessions").fetchall()
        links = conn.execute("SELECT purpose FROM link_tokens").fetchall()
    assert topics == [
        ev.EmailIndexClaimed.TOPIC,
        ev.UserRegistered.TOPIC,
        ev.SessionLoggedIn.TOPIC,
        ev.LinkEmailVerificationRequested.TOPIC,
    ]
    assert sessions == [(grant.user.id, "pandora-api", "203.0.113.7")]
    assert links == [("email_verification",)]


async def test_duplicate_email_in_any_case_is_refused(write_side: WriteSide) -> None:
    await registration.register(write_side, reg("ann@example.com"), Context())
    with pytest.raises(UserAlreadyExists):
        await registration.register(write_side, reg("  ANN@EXAMPLE.COM "), Context())


async def test_invalid_fields_and_weak_password(write_side: WriteSide) -> None:
    with pytest.raises(InvalidRequest):
        await registration.register(write_side, reg("not-an-email"), Context())
    bad = Registration(email="b@example.com", password="password", first_name="B", last_name="C")
    with pytest.raises(WeakPassword):
        await registration.register(write_side, bad, Context())


async def test_twenty_concurrent_registrations_of_one_email(write_side: WriteSide, database_url: str) -> None:
    results = await asyncio.gather(
        *(registration.register(write_side, reg("race@example.com"), Context()) for _ in range(20)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, registration.SessionGrant)]
    assert len(winners) == 1
    assert all(isinstance(r, UserAlreadyExists) for r in results if r not in winners)
    with psycopg.connect(database_url) as conn:
        users = conn.execute(
            "SELECT count(*) FROM pandora_events WHERE topic = %s", (ev.UserRegistered.TOPIC,)
        ).fetchone()
        claims = conn.execute(
            "SELECT count(*) FROM pandora_events WHERE topic = %s", (ev.EmailIndexClaimed.TOPIC,)
        ).fetchone()
        keys = conn.execute("SELECT count(*) FROM subject_keys").fetchone()
        creds = conn.execute("SELECT count(*) FROM credentials").fetchone()
    assert users == claims == keys == creds == (1,)


async def test_erase_keeps_events_shreds_personal_data_and_frees_email(
    write_side: WriteSide, database_url: str
) -> None:
    grant = await registration.register(
        write_side, reg("erase.me@example.com"), Context(metadata={"ip_address": "198.51.100.4"})
    )
    uid = grant.user.id
    _, written = await admin.erase(
        write_side,
        uid,
        if_match=None,
        ctx=Context(metadata={"actor_id": "cli", "actor_role": "admin", "reason": "gdpr request"}),
    )
    assert [e.reason for e in written.ended_sessions] == ["account_erased"]
    write_side.store.keys.clear()
    user = write_side.store.load(uid, user_agg.project)
    assert user is not None and user.erased_at is not None and user.email == ev.ERASED
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT originator_id, originator_version, topic, state FROM pandora_events ORDER BY notification_id"
        ).fetchall()
        leftovers = [
            conn.execute(f"SELECT count(*) FROM {t} WHERE user_id = %s", (uid,)).fetchone()
            for t in ("credentials", "sessions", "link_tokens", "subject_keys")
        ]
    assert leftovers == [(0,)] * 4
    from eventsourcing.persistence import StoredEvent

    decoded = [write_side.store.mapper.to_domain_event(StoredEvent(r[0], r[1], r[2], bytes(r[3]))) for r in rows]
    for event in decoded:
        for name in type(event).PERSONAL:
            assert getattr(event, name) in (ev.ERASED, None)
        assert event.metadata.get("ip_address") in (None, ev.ERASED)
        assert event.metadata.get("reason") in (None, "gdpr request")
    assert email_index.index_id(TEST_PEPPER, "erase.me@example.com") in {r[0] for r in rows}
    again = await registration.register(write_side, reg("erase.me@example.com"), Context())
    assert again.user.id != uid
    second, _ = await admin.erase(write_side, uid, if_match=None, ctx=Context())
    assert second.erased_at == user.erased_at

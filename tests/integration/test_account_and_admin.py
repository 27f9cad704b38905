"""Self-service and administrative commands on real PostgreSQL (SPEC §3.1.4–§3.2, §4.2)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from pandora_users.commands import account, admin, links, registration
from pandora_users.commands import authentication as auth
from pandora_users.commands.authentication import LoginAttempt, RefreshAttempt
from pandora_users.commands.base import WriteSide
from pandora_users.domain import events as ev
from pandora_users.domain.context import Context
from pandora_users.domain.errors import (
    InvalidCredentials,
    InvalidKycStatus,
    InvalidKycTransition,
    InvalidRefreshToken,
    InvalidToken,
    UserAlreadyExists,
    UserErased,
    UserNotFound,
    VersionConflict,
    WeakPassword,
)
from tests.integration.test_registration import PASSWORD, reg

NEW_PASSWORD = "a completely new passphrase"


def _link_token(w: WriteSide, purpose_topic: str) -> str:
    """The newest link token, as the notification service would receive it (decrypted from the event)."""
    with w.store.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(
            "SELECT notification_id FROM pandora_events WHERE topic = %s ORDER BY notification_id DESC LIMIT 1",
            (purpose_topic,),
        )
        row = curs.fetchone()
    (notification,) = w.store.recorder.select_notifications(row["notification_id"], 1)
    event = w.store.mapper.to_domain_event(notification)
    return str(event.token)


async def test_verify_email_once_then_token_is_used(write_side: WriteSide) -> None:
    grant = await registration.register(write_side, reg(), Context())
    token = _link_token(write_side, ev.LinkEmailVerificationRequested.TOPIC)
    written = await links.verify_email(write_side, token, Context())
    assert written.position is not None
    assert (await account.get_user(write_side, grant.user.id)).email_verified_at is not None
    with pytest.raises(InvalidToken):
        await links.verify_email(write_side, token, Context())
    assert await links.resend_verification(write_side, grant.user.id, Context()) is None


async def test_resend_supersedes_older_tokens(write_side: WriteSide) -> None:
    grant = await registration.register(write_side, reg(), Context())
    old = _link_token(write_side, ev.LinkEmailVerificationRequested.TOPIC)
    assert await links.resend_verification(write_side, grant.user.id, Context()) is not None
    new = _link_token(write_side, ev.LinkEmailVerificationRequested.TOPIC)
    with pytest.raises(InvalidToken):
        await links.verify_email(write_side, old, Context())
    await links.verify_email(write_side, new, Context())


async def test_password_reset_flow(write_side: WriteSide, database_url: str) -> None:
    grant = await registration.register(write_side, reg(), Context())
    await links.forgot_password(write_side, "nobody@example.com", Context())
    await links.forgot_password(write_side, " ANN@example.com", Context())
    token = _link_token(write_side, ev.LinkPasswordResetRequested.TOPIC)
    with pytest.raises(WeakPassword):
        await links.reset_password(write_side, token, "password", Context())
    await links.reset_password(write_side, token, NEW_PASSWORD, Context())  # the weak attempt did not consume it
    with pytest.raises(InvalidToken):
        await links.reset_password(write_side, token, NEW_PASSWORD + "!", Context())
    with pytest.raises(InvalidRefreshToken):  # every session ended
        await auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context())
    with pytest.raises(InvalidCredentials):
        await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD), Context())
    await auth.log_in(write_side, LoginAttempt("ann@example.com", NEW_PASSWORD), Context())
    user = await account.get_user(write_side, grant.user.id)
    assert user.email_verified_at is not None  # the link proved the mailbox
    with psycopg.connect(database_url) as conn:
        resets = conn.execute(
            "SELECT count(*) FROM pandora_events WHERE topic = %s", (ev.LinkPasswordResetRequested.TOPIC,)
        ).fetchone()
    assert resets == (1,)  # the unknown email wrote nothing


async def test_password_change_keeps_the_caller_and_ends_the_others(write_side: WriteSide) -> None:
    grant = await registration.register(write_side, reg(), Context())
    other = (await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD), Context())).grant
    with pytest.raises(WeakPassword):
        await account.change_password(
            write_side, grant.user.id, grant.session_id, current=PASSWORD, new=PASSWORD, ctx=Context()
        )
    with pytest.raises(InvalidCredentials):
        await account.change_password(
            write_side, grant.user.id, grant.session_id, current="wrong one!", new=NEW_PASSWORD, ctx=Context()
        )
    written = await account.change_password(
        write_side, grant.user.id, grant.session_id, current=PASSWORD, new=NEW_PASSWORD, ctx=Context()
    )
    assert [e.session_id for e in written.ended_sessions] == [other.session_id]
    await auth.refresh(write_side, RefreshAttempt(grant.refresh_token), Context())


async def test_profile_update_if_match_and_noop(write_side: WriteSide) -> None:
    grant = await registration.register(write_side, reg(), Context())
    uid = grant.user.id
    user, written = await account.update_profile(
        write_side, uid, first_name="Ann", last_name=None, if_match=None, ctx=Context()
    )
    assert written.position is None and user.version == 1
    with pytest.raises(VersionConflict):
        await account.update_profile(write_side, uid, first_name="Anna", last_name=None, if_match=5, ctx=Context())
    user, written = await account.update_profile(
        write_side, uid, first_name="Anna", last_name="Li", if_match=1, ctx=Context()
    )
    assert (user.first_name, user.last_name, user.version) == ("Anna", "Li", 2) and written.position


async def test_concurrent_edits_with_the_same_if_match_one_wins(write_side: WriteSide) -> None:
    grant = await registration.register(write_side, reg(), Context())
    results = await asyncio.gather(
        admin.change_kyc(write_side, grant.user.id, "verified", if_match=1, ctx=Context()),
        admin.change_kyc(write_side, grant.user.id, "rejected", if_match=1, ctx=Context()),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["VersionConflict", "tuple"]


async def test_kyc_resubmission_rules(write_side: WriteSide) -> None:
    grant = await registration.register(write_side, reg(), Context())
    uid = grant.user.id
    with pytest.raises(InvalidKycTransition):
        await account.resubmit_kyc(write_side, uid, "pending", Context())
    with pytest.raises(InvalidKycStatus):
        await account.resubmit_kyc(write_side, uid, "verified", Context())
    await admin.change_kyc(write_side, uid, "rejected", if_match=None, ctx=Context().with_reason("blurry scan"))
    user, _ = await account.resubmit_kyc(write_side, uid, "pending", Context())
    assert user.kyc_status == "pending"


async def test_role_change_ends_sessions_and_delete_restore(write_side: WriteSide) -> None:
    grant = await registration.register(write_side, reg(), Context())
    uid = grant.user.id
    user, written = await admin.change_role(write_side, uid, "admin", if_match=None, ctx=Context())
    assert user.role == "admin" and [e.reason for e in written.ended_sessions] == ["role_changed"]
    await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD, audience="pandora-admin"), Context())
    user, written = await account.delete_user(write_side, uid, if_match=None, ctx=Context(), must_be_live=True)
    assert not user.is_active and {e.reason_class for e in written.ended_sessions} == {"deleted"}
    with pytest.raises(InvalidCredentials):
        await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD), Context())
    with pytest.raises(UserAlreadyExists):  # the email stays reserved
        await registration.register(write_side, reg(), Context())
    with pytest.raises(UserNotFound):
        await admin.change_kyc(write_side, uid, "verified", if_match=None, ctx=Context())
    user, _ = await admin.restore(write_side, uid, if_match=None, ctx=Context())
    assert user.is_active
    await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD), Context())
    await admin.erase(write_side, uid, if_match=None, ctx=Context())
    with pytest.raises(UserErased):
        await admin.restore(write_side, uid, if_match=None, ctx=Context())


async def test_unlock_ends_the_lock(write_side: WriteSide) -> None:
    grant = await registration.register(write_side, reg(), Context())
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            await auth.log_in(write_side, LoginAttempt("ann@example.com", "wrong password!"), Context())
    user, written = await admin.unlock(write_side, grant.user.id, if_match=None, ctx=Context())
    assert user.locked_until is None and written.position is not None
    await auth.log_in(write_side, LoginAttempt("ann@example.com", PASSWORD), Context())
    _, again = await admin.unlock(write_side, grant.user.id, if_match=None, ctx=Context())
    assert again.position is None


async def test_create_admin_and_promote(write_side: WriteSide, database_url: str) -> None:
    created = await registration.create_admin(
        write_side,
        email="root@example.com",
        password=lambda: PASSWORD,
        first_name="Admin",
        last_name="User",
        promote=False,
        ctx=Context(metadata={"actor_id": "cli", "actor_role": "admin"}),
    )
    outcome = await auth.log_in(
        write_side, LoginAttempt("root@example.com", PASSWORD, audience="pandora-admin"), Context()
    )
    assert outcome.grant.user.role == "admin" and outcome.grant.user.id == created.user_id
    with pytest.raises(UserAlreadyExists):
        await registration.create_admin(
            write_side,
            email="root@example.com",
            password=lambda: PASSWORD,
            first_name="A",
            last_name="B",
            promote=False,
            ctx=Context(),
        )
    ann = await registration.register(write_side, reg(), Context())
    promoted = await registration.create_admin(
        write_side,
        email="ann@example.com",
        password=lambda: "",
        first_name="A",
        last_name="B",
        promote=True,
        ctx=Context(),
    )
    assert promoted.promoted and promoted.user_id == ann.user.id
    with psycopg.connect(database_url) as conn:
        states = [bytes(r[0]) for r in conn.execute("SELECT state FROM pandora_events")]
    assert all(b"root@example.com" not in s and b"argon2" not in s for s in states)

"""Given/when/then tests for the session, link and email-index aggregates."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from pandora_users.domain import email_index, link
from pandora_users.domain import events as ev
from pandora_users.domain import session as s
from pandora_users.domain.errors import UserAlreadyExists
from tests.unit.given import T0, ctx, given, then


def logged_in(audience: str = "pandora-api") -> ev.SessionLoggedIn:
    return s.log_in(
        uuid.uuid4(),
        user_id=uuid.uuid4(),
        email="ann@example.com",
        audience=audience,
        expires_at=T0 + timedelta(hours=168),
        ip_address="203.0.113.9",
        user_agent="x" * 600,
        ctx=ctx(),
    )


def test_login_creates_live_session_and_truncates_user_agent() -> None:
    event = logged_in()
    assert event.user_agent is not None and len(event.user_agent) == 512
    session = given(s.project, event)
    assert session.is_live(T0) and not session.is_live(T0 + timedelta(hours=168))


def test_unknown_audience_refused() -> None:
    with pytest.raises(ValueError, match="audience"):
        logged_in("pandora-root")


def test_logout_then_nothing_more() -> None:
    session = given(s.project, logged_in())
    then(
        s.log_out(session, ctx=ctx(1)),
        (ev.SessionLoggedOut, {"originator_version": 2, "audience": "pandora-api"}),
    )
    ended = s.apply(session, s.log_out(session, ctx=ctx(1))[0])
    assert ended.end_reason == "logged_out" and not ended.is_live(T0)
    assert s.log_out(ended, ctx=ctx(2)) == []
    assert s.revoke(ended, "user_revoked", ctx=ctx(2)) == []


@pytest.mark.parametrize("reason", sorted(s.REVOKE_REASONS))
def test_revoke_with_every_reason(reason: str) -> None:
    session = given(s.project, logged_in())
    then(
        s.revoke(session, reason, ctx=ctx()),
        (ev.SessionRevoked, {"reason": reason, "session_id": str(session.id)}),
    )


def test_revoke_unknown_reason_refused() -> None:
    with pytest.raises(ValueError, match="reason"):
        s.revoke(given(s.project, logged_in()), "bored", ctx=ctx())


def test_reuse_detection_records_then_revokes() -> None:
    session = given(s.project, logged_in())
    events = s.detect_reuse(session, ip_address="198.51.100.1", user_agent="curl", ctx=ctx(3))
    then(
        events,
        (ev.SessionTokenReuseDetected, {"originator_version": 2, "ip_address": "198.51.100.1"}),
        (ev.SessionRevoked, {"originator_version": 3, "reason": "token_reuse"}),
    )
    assert s.project(session, events).end_reason == "token_reuse"  # type: ignore[union-attr]


def test_link_ids_are_derived_and_versions_grow() -> None:
    user_id = uuid.uuid4()
    assert link.link_id(user_id, "password_reset") == link.link_id(user_id, "password_reset")
    assert link.link_id(user_id, "password_reset") != link.link_id(user_id, "email_verification")
    first = link.request(
        None,
        user_id=user_id,
        purpose="password_reset",
        email="a@b.co",
        first_name="A",
        token="tok",
        url_template="https://x/reset?token={token}",
        expires_at=T0,
        ctx=ctx(),
    )
    assert isinstance(first, ev.LinkPasswordResetRequested) and first.link == "https://x/reset?token=tok"
    state = given(link.project, first)
    second = link.request(
        state,
        user_id=user_id,
        purpose="password_reset",
        email="a@b.co",
        first_name="A",
        token="t2",
        url_template="https://x/{token}",
        expires_at=T0,
        ctx=ctx(),
    )
    assert second.originator_version == 2


def test_email_index_claim_release_reclaim() -> None:
    pepper = b"p" * 32
    iid = email_index.index_id(pepper, "ann@example.com")
    assert iid == email_index.index_id(pepper, "ann@example.com") != email_index.index_id(b"q" * 32, "ann@example.com")
    owner = uuid.uuid4()
    claimed = email_index.claim(None, index_uuid=iid, user_id=owner, ctx=ctx())
    index = given(email_index.project, claimed)
    with pytest.raises(UserAlreadyExists):
        email_index.claim(index, index_uuid=iid, user_id=uuid.uuid4(), ctx=ctx())
    assert email_index.release(index, user_id=uuid.uuid4(), ctx=ctx()) == []
    released = email_index.apply(index, email_index.release(index, user_id=owner, ctx=ctx())[0])
    assert released.owner is None
    again = email_index.claim(released, index_uuid=iid, user_id=uuid.uuid4(), ctx=ctx())
    assert again.originator_version == 3

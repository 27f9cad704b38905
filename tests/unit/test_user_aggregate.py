"""Given/when/then tests for every command and rule of the user aggregate."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pandora_users.domain import events as ev
from pandora_users.domain import user as u
from pandora_users.domain.errors import (
    InvalidKycStatus,
    InvalidKycTransition,
    InvalidRole,
    UserErased,
    UserNotFound,
    VersionConflict,
)
from tests.unit.given import T0, ctx, given, registered, then


def test_register_starts_pending_unverified_at_version_1() -> None:
    event = registered()
    user = given(u.project, event)
    assert (user.version, user.kyc_status, user.role, user.email_verified_at) == (1, "pending", "user", None)
    assert user.created_at == user.updated_at == T0 and user.is_active


def test_register_rejects_unknown_role() -> None:
    with pytest.raises(InvalidRole):
        u.register(registered().originator_id, email="a@b.co", first_name="A", last_name="B", role="root", ctx=ctx())


def test_verify_email_once() -> None:
    user = given(u.project, registered())
    events = u.verify_email(user, method="link", ctx=ctx(1))
    then(
        events,
        (ev.UserEmailVerified, {"method": "link", "originator_version": 2, "email": "ann@example.com"}),
    )
    verified = given(u.project, registered(user.id), *events)
    assert verified.email_verified_at == T0 + timedelta(minutes=1)
    assert u.verify_email(verified, method="link", ctx=ctx(2)) == []


def test_profile_update_records_changed_fields_and_noop_emits_nothing() -> None:
    user = given(u.project, registered())
    then(
        u.update_profile(user, first_name="Anna", last_name=None, ctx=ctx()),
        (ev.UserProfileUpdated, {"first_name": "Anna", "last_name": "Lee", "changed_fields": ["first_name"]}),
    )
    assert u.update_profile(user, first_name="Ann", last_name="Lee", ctx=ctx()) == []


@pytest.mark.parametrize(
    ("current", "new", "self_service", "outcome"),
    [
        ("pending", "verified", False, "event"),
        ("verified", "rejected", False, "event"),
        ("rejected", "pending", False, "event"),
        ("pending", "pending", False, "none"),
        ("pending", "approved", False, InvalidKycStatus),
        ("rejected", "pending", True, "event"),
        ("pending", "pending", True, InvalidKycTransition),
        ("verified", "pending", True, InvalidKycTransition),
        ("rejected", "verified", True, InvalidKycStatus),
    ],
)
def test_kyc_transition_rules(current: str, new: str, self_service: bool, outcome: object) -> None:
    user = given(u.project, registered())
    if current != "pending":
        user = u.apply(user, u.change_kyc(user, current, self_service=False, ctx=ctx())[0])
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            u.change_kyc(user, new, self_service=self_service, ctx=ctx())
        return
    events = u.change_kyc(user, new, self_service=self_service, ctx=ctx())
    if outcome == "none":
        assert events == []
    else:
        then(events, (ev.UserKycUpdated, {"kyc_status": new, "old_status": current}))


def test_role_change_and_noop() -> None:
    user = given(u.project, registered())
    then(u.change_role(user, "admin", ctx=ctx()), (ev.UserRoleChanged, {"role": "admin", "old_role": "user"}))
    assert u.change_role(user, "user", ctx=ctx()) == []
    with pytest.raises(InvalidRole):
        u.change_role(user, "superuser", ctx=ctx())


def test_lock_then_unlock_and_expiry() -> None:
    user = given(u.project, registered())
    until = T0 + timedelta(minutes=15)
    lock = u.lock(user, until=until, failed_attempts=10, ctx=ctx())
    then(lock, (ev.UserLocked, {"locked_until": until, "failed_attempts": 10}))
    locked = u.apply(user, lock[0])
    assert locked.is_locked(T0) and not locked.is_locked(until)
    then(u.unlock(locked, method="admin", ctx=ctx(1)), (ev.UserUnlocked, {"method": "admin"}))
    assert u.unlock(locked, method="admin", ctx=ctx(20)) == []  # expired: nothing to unlock
    assert u.unlock(user, method="admin", ctx=ctx()) == []


def test_delete_restore_erase_lifecycle() -> None:
    user = given(u.project, registered())
    assert u.restore(user, ctx=ctx()) == []
    deleted = u.apply(user, u.delete(user, ctx=ctx(1))[0])
    assert not deleted.is_active and deleted.deleted_at == T0 + timedelta(minutes=1)
    assert u.delete(deleted, ctx=ctx(2)) == []
    with pytest.raises(UserNotFound):
        u.require_live(deleted)
    restored = u.apply(deleted, u.restore(deleted, ctx=ctx(3))[0])
    assert restored.is_active
    erased = u.apply(restored, u.erase(restored, ctx=ctx(4))[0])
    assert (erased.email, erased.first_name, erased.erased_at) == (
        ev.ERASED,
        ev.ERASED,
        T0 + timedelta(minutes=4),
    )
    assert u.erase(erased, ctx=ctx(5)) == []
    with pytest.raises(UserErased):
        u.restore(erased, ctx=ctx(5))


def test_logged_out_all_only_with_sessions() -> None:
    user = given(u.project, registered())
    assert u.log_out_all(user, [], ctx=ctx()) == []
    then(u.log_out_all(user, ["s1", "s2"], ctx=ctx()), (ev.UserLoggedOutAll, {"session_count": 2}))


def test_if_match_precondition() -> None:
    user = given(u.project, registered())
    u.check_version(user, None)
    u.check_version(user, 1)
    with pytest.raises(VersionConflict) as info:
        u.check_version(user, 7)
    assert info.value.extra == {"current_version": 1}


def test_events_carry_context_metadata_and_time() -> None:
    user = given(u.project, registered())
    (event,) = u.change_role(user, "admin", ctx=ctx(5, actor_id="admin-1", actor_role="admin", reason="promotion"))
    assert event.metadata == {"actor_id": "admin-1", "actor_role": "admin", "reason": "promotion"}
    assert event.timestamp == T0 + timedelta(minutes=5) and event.user_id == user.id


def test_events_of_another_aggregate_are_not_a_user() -> None:
    from tests.unit.test_session_link_index import logged_in

    assert u.project(None, [logged_in()]) is None

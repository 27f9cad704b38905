"""The state of a user at an instant (SPEC §4.2 `?as_of=`), rebuilt from the real event store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pandora_users.commands import account, admin, registration
from pandora_users.commands.as_of import state_at, user_as_of
from pandora_users.commands.base import WriteSide
from pandora_users.domain.context import Context
from pandora_users.domain.errors import InvalidRequest, UserNotFound
from pandora_users.domain.user import User
from tests.integration.test_registration import reg

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(minutes: int) -> Context:
    return Context(now=T0 + timedelta(minutes=minutes), metadata={"actor_id": "cli", "actor_role": "admin"})


async def scripted_life(w: WriteSide) -> list[tuple[datetime, User]]:
    """Register, then one change a minute; the state each command returned, with its time."""
    grant = await registration.register(w, reg(), at(0))
    uid = grant.user.id
    steps = [(T0, grant.user)]
    changes = [
        lambda ctx: account.update_profile(w, uid, first_name="Bo", last_name=None, if_match=None, ctx=ctx),
        lambda ctx: admin.change_kyc(w, uid, "rejected", if_match=None, ctx=ctx),
        lambda ctx: admin.change_kyc(w, uid, "pending", if_match=None, ctx=ctx),
        lambda ctx: admin.change_kyc(w, uid, "verified", if_match=None, ctx=ctx),
        lambda ctx: admin.change_role(w, uid, "admin", if_match=None, ctx=ctx),
        lambda ctx: account.delete_user(w, uid, if_match=None, ctx=ctx, must_be_live=False),
        lambda ctx: admin.restore(w, uid, if_match=None, ctx=ctx),
    ]
    for minute, change in enumerate(changes, start=1):
        ctx = at(minute)
        user, _ = await change(ctx)
        steps.append((ctx.now, user))
    return steps


async def test_state_at_each_step_is_the_state_the_command_returned(write_side: WriteSide) -> None:
    steps = await scripted_life(write_side)
    for moment, expected in steps:
        assert state_at(write_side.store, expected.id, moment) == expected
        # Between two steps the state is still the earlier one.
        assert state_at(write_side.store, expected.id, moment + timedelta(seconds=30)) == expected
    assert [u.version for _, u in steps] == list(range(1, 9))
    assert [u.kyc_status for _, u in steps][2:5] == ["rejected", "pending", "verified"]
    assert steps[6][1].deleted_at is not None and steps[7][1].deleted_at is None


async def test_before_registration_and_other_ids_are_not_found(write_side: WriteSide) -> None:
    steps = await scripted_life(write_side)
    uid = steps[0][1].id
    assert state_at(write_side.store, uid, T0 - timedelta(microseconds=1)) is None
    with pytest.raises(UserNotFound):
        await user_as_of(write_side, uid, T0 - timedelta(seconds=1))
    session_id = (await registration.register(write_side, reg("other@example.com"), at(0))).session_id
    assert state_at(write_side.store, session_id, T0 + timedelta(hours=1)) is None


async def test_future_and_naive_instants_are_refused(write_side: WriteSide) -> None:
    steps = await scripted_life(write_side)
    uid = steps[0][1].id
    with pytest.raises(InvalidRequest) as future:
        await user_as_of(write_side, uid, datetime.now(UTC) + timedelta(minutes=1))
    assert future.value.details[0].field == "as_of"
    with pytest.raises(InvalidRequest):
        await user_as_of(write_side, uid, datetime(2026, 3, 1, 12, 30))  # naive on purpose
    assert (await user_as_of(write_side, uid, T0 + timedelta(minutes=2))).kyc_status == "rejected"


async def test_after_erasure_past_states_keep_everything_but_personal_data(write_side: WriteSide) -> None:
    steps = await scripted_life(write_side)
    uid = steps[0][1].id
    await admin.erase(write_side, uid, if_match=None, ctx=at(60))
    past = state_at(write_side.store, uid, T0 + timedelta(minutes=4))
    assert past is not None
    assert (past.email, past.first_name, past.last_name) == ("[erased]", "[erased]", "[erased]")
    assert (past.kyc_status, past.role, past.version, past.erased_at) == ("verified", "user", 5, None)
    now = state_at(write_side.store, uid, T0 + timedelta(hours=2))
    assert now is not None and now.erased_at == T0 + timedelta(minutes=60) and not now.is_active

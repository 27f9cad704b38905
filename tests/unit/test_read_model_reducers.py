"""The read-model reducers without a database: each user event's statements, and the event-index rows.

A tiny interpreter runs the reducers' two statement shapes (INSERT of a new row, UPDATE ... SET ... WHERE id)
on dicts, so each event's effect is checked as data, and the fold is compared with the user aggregate's own
`apply` (the read model must agree with the write model).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from pandora_users.domain import events as ev
from pandora_users.domain import link as link_agg
from pandora_users.domain import session as session_agg
from pandora_users.domain import user as u
from pandora_users.domain.context import Context
from projections import event_log, users
from projections.users import Statement, reduce
from tests.unit.given import T0, ctx, given, registered

INSERT_COLUMNS = re.compile(r"INSERT INTO \{table\} \(([^)]*)\) VALUES")
UPDATE_SET = re.compile(r"UPDATE \{table\} SET (.*) WHERE id = %s$")
Row = dict[str, Any]


def run(table: dict[uuid.UUID, Row], statement: Statement) -> None:
    if match := INSERT_COLUMNS.match(statement.sql):
        columns = [c.strip() for c in match.group(1).split(",")]
        row = dict(zip(columns, statement.params, strict=True))
        assert row["id"] not in table
        table[row["id"]] = {**dict.fromkeys(NULLABLE), **row}
        return
    match = UPDATE_SET.match(statement.sql)
    assert match is not None, statement.sql
    names = [part.split("=")[0].strip() for part in match.group(1).split(",")]
    *values, user_id = statement.params
    table[user_id].update(zip(names, values, strict=True))


NULLABLE = ("email_verified_at", "locked_until", "deleted_at", "erased_at")


def fold(*events: ev.DomainEvent) -> dict[uuid.UUID, Row]:
    table: dict[uuid.UUID, Row] = {}
    for position, event in enumerate(events, start=1):
        for statement in reduce(event, position):
            run(table, statement)
    return table


def only_row(*events: ev.DomainEvent) -> Row:
    (row,) = fold(*events).values()
    return row


def set_columns(statement: Statement) -> dict[str, Any]:
    match = UPDATE_SET.match(statement.sql)
    assert match is not None
    names = [part.split("=")[0].strip() for part in match.group(1).split(",")]
    return dict(zip(names, statement.params[:-1], strict=True))


def test_registration_inserts_the_full_row() -> None:
    event = registered()
    row = only_row(event)
    assert row == {
        "id": event.originator_id,
        "email": "ann@example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "role": "user",
        "kyc_status": "pending",
        "created_at": T0,
        "updated_at": T0,
        "version": 1,
        "position": 1,
        "email_verified_at": None,
        "locked_until": None,
        "deleted_at": None,
        "erased_at": None,
    }


def _user_events() -> list[tuple[str, ev.DomainEvent, dict[str, Any]]]:
    """(name, event at version 2, the columns it must set besides version/updated_at/position)."""
    first = registered()
    user = given(u.project, first)
    later = ctx(5)
    until = T0 + timedelta(minutes=20)
    locked = given(u.project, first, *u.lock(user, until=until, failed_attempts=3, ctx=ctx(1)))
    deleted = given(u.project, first, *u.delete(user, ctx=ctx(1)))

    def v2(event: ev.DomainEvent) -> ev.DomainEvent:
        return msgspec.structs.replace(event, originator_version=2)

    return [
        ("email verified", u.verify_email(user, method="link", ctx=later)[0], {"email_verified_at": later.now}),
        (
            "profile",
            u.update_profile(user, first_name="Anna", last_name="Berg", ctx=later)[0],
            {"first_name": "Anna", "last_name": "Berg"},
        ),
        ("password", u.change_password(user, method="change", ctx=later), {}),
        ("kyc", u.change_kyc(user, "verified", self_service=False, ctx=later)[0], {"kyc_status": "verified"}),
        ("role", u.change_role(user, "admin", ctx=later)[0], {"role": "admin"}),
        ("locked", u.lock(user, until=until, failed_attempts=3, ctx=later)[0], {"locked_until": until}),
        ("unlocked", v2(u.unlock(locked, method="admin", ctx=later)[0]), {"locked_until": None}),
        ("logged out all", u.log_out_all(user, ["s1"], ctx=later)[0], {}),
        ("deleted", u.delete(user, ctx=later)[0], {"deleted_at": later.now}),
        ("restored", v2(u.restore(deleted, ctx=later)[0]), {"deleted_at": None}),
        (
            "erased",
            u.erase(user, ctx=later)[0],
            {"erased_at": later.now, "email": None, "first_name": ev.ERASED, "last_name": ev.ERASED},
        ),
    ]


@pytest.mark.parametrize(("name", "event", "columns"), _user_events(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_user_event_sets_its_columns_and_the_bookkeeping(
    name: str, event: ev.DomainEvent, columns: dict[str, Any]
) -> None:
    (statement,) = reduce(event, 42)
    assert statement.params[-1] == event.originator_id
    assert set_columns(statement) == {**columns, "version": 2, "updated_at": event.timestamp, "position": 42}


def test_every_user_event_class_has_a_case() -> None:
    covered = {type(event) for _, event, _ in _user_events()} | {ev.UserRegistered}
    assert covered == set(users.USER_EVENTS)
    assert set(users.TOPICS) == {cls.TOPIC for cls in users.USER_EVENTS}


def test_events_of_other_aggregates_are_ignored() -> None:
    user_id = uuid.uuid4()
    session = session_agg.log_in(
        uuid.uuid4(),
        user_id=user_id,
        email="a@b.co",
        audience="pandora-api",
        expires_at=T0,
        ip_address="10.0.0.1",
        user_agent="ua",
        ctx=ctx(),
    )
    requested = link_agg.request(
        None,
        user_id=user_id,
        purpose="email_verification",
        email="a@b.co",
        first_name="A",
        token="tok",
        url_template="http://x/{token}",
        expires_at=T0,
        ctx=ctx(),
    )
    claimed = ev.EmailIndexClaimed(originator_id=uuid.uuid4(), originator_version=1, timestamp=T0, user_id=user_id)
    assert reduce(session, 1) == reduce(requested, 2) == reduce(claimed, 3) == []


def _erased_copy(event: ev.DomainEvent) -> ev.DomainEvent:
    """The event as decoded after its user's key was destroyed: personal fields `[erased]`."""
    return msgspec.structs.replace(event, **dict.fromkeys(type(event).PERSONAL, ev.ERASED))


def test_erased_inputs_are_tolerated_and_never_store_a_fake_email() -> None:
    first = registered()
    user = given(u.project, first)
    profile = u.update_profile(user, first_name="Anna", last_name=None, ctx=ctx(1))[0]
    row = only_row(_erased_copy(first), _erased_copy(profile))
    assert (row["email"], row["first_name"], row["last_name"], row["version"]) == (None, ev.ERASED, ev.ERASED, 2)


def _aggregate_row(user: u.User) -> Row:
    fields = ("id", "first_name", "last_name", "role", "kyc_status", "created_at", "updated_at", "version")
    row = {name: getattr(user, name) for name in (*fields, *NULLABLE)}
    row["email"] = None if user.email == ev.ERASED else user.email
    return row


def _lifecycle() -> list[ev.DomainEvent]:
    first = registered()
    events: list[ev.DomainEvent] = [first]
    steps = [
        lambda s, c: u.verify_email(s, method="link", ctx=c),
        lambda s, c: u.change_kyc(s, "rejected", self_service=False, ctx=c),
        lambda s, c: u.change_kyc(s, "pending", self_service=True, ctx=c),
        lambda s, c: u.change_role(s, "admin", ctx=c),
        lambda s, c: u.lock(s, until=c.now + timedelta(minutes=15), failed_attempts=10, ctx=c),
        lambda s, c: u.unlock(s, method="password_reset", ctx=c),
        lambda s, c: u.update_profile(s, first_name=None, last_name="Stone", ctx=c),
        lambda s, c: u.delete(s, ctx=c),
        lambda s, c: u.restore(s, ctx=c),
        lambda s, c: u.delete(s, ctx=c),
        lambda s, c: u.erase(s, ctx=c),
    ]
    for minute, step in enumerate(steps, start=1):
        state = given(u.project, *events)
        decided = step(state, Context(now=T0 + timedelta(minutes=minute)))
        assert decided, minute
        events += decided
    return events


def test_fold_of_a_whole_lifecycle_equals_the_aggregate_at_every_step() -> None:
    events = _lifecycle()
    for n in range(1, len(events) + 1):
        row = only_row(*events[:n])
        assert row.pop("position") == n
        assert row == _aggregate_row(given(u.project, *events[:n]))


def test_event_log_rows_carry_the_deterministic_event_id_and_no_payload() -> None:
    event = registered()
    event = msgspec.structs.replace(event, metadata={"actor_id": "cli", "ip_address": "sealed"})
    row = event_log.reduce(event, 7)
    assert row is not None
    assert row.event_id == uuid.uuid5(
        uuid.UUID("9f1c2d3e-5a6b-4c7d-8e9f-a0b1c2d3e4f5"), f"{event.originator_id}:{event.originator_version}"
    )
    assert (row.position, row.event_type, row.user_id, row.aggregate_id, row.aggregate_version) == (
        7,
        "user.registered",
        event.user_id,
        event.originator_id,
        1,
    )
    assert (row.timestamp, row.schema_version, row.actor_id) == (T0, 1, "cli")
    assert set(event_log.COLUMNS) == set(event_log.Row.__dataclass_fields__)


def test_event_log_indexes_published_events_only() -> None:
    claimed = ev.EmailIndexClaimed(originator_id=uuid.uuid4(), originator_version=1, timestamp=T0, user_id=uuid.uuid4())
    assert event_log.reduce(claimed, 1) is None
    assert set(event_log.TOPICS) == {cls.TOPIC for cls in ev.ALL_EVENTS if cls.EVENT_TYPE}
    anonymous = msgspec.structs.replace(registered(), metadata={})
    row = event_log.reduce(anonymous, 2)
    assert row is not None and row.actor_id is None


def _statements(events: Sequence[ev.DomainEvent]) -> list[Statement]:
    return [s for position, event in enumerate(events, start=1) for s in reduce(event, position)]


def _interpret(statements: Sequence[Statement]) -> dict[uuid.UUID, Row]:
    table: dict[uuid.UUID, Row] = {}
    for statement in statements:
        run(table, statement)
    return table


def test_coalescing_a_batch_leaves_one_statement_per_user_with_the_same_result() -> None:
    lifecycle = _lifecycle()
    other = registered()
    other_later = u.change_kyc(given(u.project, other), "verified", self_service=False, ctx=ctx(3))
    events = [lifecycle[0], other, *lifecycle[1:6], *other_later, *lifecycle[6:]]
    statements = _statements(events)
    merged = users.coalesce(statements)
    assert sorted(s.id for s in merged) == sorted({lifecycle[0].originator_id, other.originator_id})
    assert all(s.op == "insert" for s in merged)
    assert _interpret(merged) == _interpret(statements)


def test_coalescing_updates_of_an_existing_user_keeps_the_last_values() -> None:
    lifecycle = _lifecycle()
    before = _interpret(_statements(lifecycle[:3]))
    later = [s for p, e in enumerate(lifecycle[3:9], start=4) for s in reduce(e, p)]
    (merged,) = users.coalesce(later)
    assert merged.op == "update" and merged.values["position"] == 9
    one_by_one, at_once = {k: dict(v) for k, v in before.items()}, {k: dict(v) for k, v in before.items()}
    for statement in later:
        run(one_by_one, statement)
    run(at_once, merged)
    assert at_once == one_by_one


def test_a_second_registration_of_one_user_in_a_batch_is_refused() -> None:
    event = registered()
    with pytest.raises(ValueError, match="registered twice"):
        users.coalesce(reduce(event, 1) + reduce(event, 2))

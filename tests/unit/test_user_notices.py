"""The users projector's change notices (projections/users.py) and how a serving process reads them."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.queries.user_rows import UserRows
from projections.users import NOTICE_MAX_IDS, change_notice, parse_notice


@given(st.integers(min_value=1, max_value=2**63 - 1), st.sets(st.uuids(), max_size=NOTICE_MAX_IDS))
def test_a_notice_names_its_position_and_ids(position: int, ids: set[uuid.UUID]) -> None:
    payload = change_notice(position, ids)
    assert parse_notice(payload) == (position, frozenset(ids))
    assert len(payload.encode()) < 8000  # PostgreSQL's payload limit


def test_too_many_ids_or_none_means_any_row() -> None:
    many = {uuid.uuid4() for _ in range(NOTICE_MAX_IDS + 1)}
    assert parse_notice(change_notice(7, many)) == (7, None)
    assert parse_notice(change_notice(7, None)) == (7, None)
    assert change_notice(7, set()) == "7"


@pytest.mark.parametrize("payload", ["", "x", "7 not-a-uuid", "7 *,x"])
def test_an_unreadable_notice_forgets_every_row(payload: str) -> None:
    rows = UserRows(None, None)  # type: ignore[arg-type]  # never started: no pool or connection needed
    rows.through = 3
    rows._rows[uuid.uuid4()] = ({}, 3)
    rows._notified(None, 0, "pandora_users_changed", payload)
    assert rows.through is None and len(rows) == 0

"""gRPC's User from a read-model row, and from that row's DTO (what the list RPC converts): the same message."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from projections.queries.users import to_dto
from rpc.convert import user_from_row

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
maybe = st.none() | moments
text = st.text(max_size=20)

rows = st.fixed_dictionaries(
    {
        "id": st.uuids(version=4),
        "email": st.none() | st.emails(),  # None: erased
        "first_name": text,
        "last_name": text,
        "role": st.sampled_from(["user", "admin"]),
        "kyc_status": st.sampled_from(["pending", "verified", "rejected"]),
        "email_verified_at": maybe,
        "created_at": moments,
        "updated_at": moments,
        "locked_until": st.none() | st.just(NOW + timedelta(minutes=5)),
        "deleted_at": maybe,
        "erased_at": maybe,
        "version": st.integers(1, 10_000),
    }
)


def _moment(message: Any, name: str) -> datetime | None:
    return getattr(message, name).ToDatetime(tzinfo=UTC) if message.HasField(name) else None


@given(rows)
def test_a_row_and_its_dto_give_the_rows_user(row: dict[str, Any]) -> None:
    user = user_from_row(row)
    assert user == user_from_row(to_dto(row, NOW))
    assert user.id == str(row["id"]) and user.email == (row["email"] or "[erased]")
    assert (user.first_name, user.last_name, user.role, user.kyc_status) == (
        row["first_name"], row["last_name"], row["role"], row["kyc_status"],
    )  # fmt: skip
    assert [_moment(user, name) for name in ("created_at", "updated_at", "deleted_at")] == [
        row["created_at"], row["updated_at"], row["deleted_at"],
    ]  # fmt: skip


def test_an_erased_email_reads_erased() -> None:
    row = {
        "id": uuid.uuid4(), "email": None, "first_name": "[erased]", "last_name": "[erased]", "role": "user",
        "kyc_status": "pending", "created_at": NOW, "updated_at": NOW, "deleted_at": None,
    }  # fmt: skip
    assert user_from_row(row).email == "[erased]"

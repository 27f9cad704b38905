"""`GET /users/me` builds its UserDTO from a users row directly: the same fields as the admin DTO's public part."""

from __future__ import annotations

from typing import Any

from hypothesis import given

from api.deps import row_dto
from api.schemas import UserDTO
from projections.queries.users import to_dto
from tests.unit.test_grpc_convert import NOW, rows


@given(rows)
def test_a_rows_user_dto_is_the_public_part_of_its_admin_dto(row: dict[str, Any]) -> None:
    admin = to_dto(row, NOW)
    assert row_dto(row) == UserDTO(**{name: admin[name] for name in UserDTO.__struct_fields__})

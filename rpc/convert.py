"""Read-model DTOs, write-model users, stream entries and claims as protobuf messages (SPEC §5.1)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import msgspec
from google.protobuf.timestamp_pb2 import Timestamp

from pandora_users.domain.events import ERASED
from pandora_users.domain.user import User
from projections.integration_events import Entry
from rpc.gen import user_pb2 as pb

_encoder = msgspec.json.Encoder()
_metadata = msgspec.json.Decoder(dict[str, str])


def timestamp(value: datetime | str | int | None) -> Timestamp | None:
    """A Timestamp from a datetime, an RFC 3339 string (SPEC §2.2) or epoch seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, int):
        return Timestamp(seconds=value)
    if isinstance(value, str):
        # C-fast, where Timestamp.FromJsonString is strptime (a tenth of a GetUser); a string without an offset
        # is not RFC 3339 (§2.2 stamps are UTC with `Z`).
        value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            raise ValueError(f"timestamp without an offset: {value}")
    return Timestamp(seconds=math.floor(value.timestamp()), nanos=value.microsecond * 1000)


def user_from_row(row: Any) -> pb.User:
    """A `User` from a users read-model row, or from its AdminUserDTO (`to_dto`): the same keys, with ids and
    moments as values or as text; `deleted_at` only for soft-deleted users."""
    email = row["email"]
    return pb.User(
        id=str(row["id"]),
        email=ERASED if email is None else email,
        first_name=row["first_name"],
        last_name=row["last_name"],
        kyc_status=row["kyc_status"],
        role=row["role"],
        created_at=timestamp(row["created_at"]),
        updated_at=timestamp(row["updated_at"]),
        deleted_at=timestamp(row["deleted_at"]),
    )


def user_from_state(user: User) -> pb.User:
    """A `User` from the write model (what a command returns)."""
    return pb.User(
        id=str(user.id),
        email=user.email,
        first_name=user.first_name,
        last_name=user.last_name,
        kyc_status=user.kyc_status,
        role=user.role,
        created_at=timestamp(user.created_at),
        updated_at=timestamp(user.updated_at),
        deleted_at=timestamp(user.deleted_at),
    )


def event_from_dto(dto: dict[str, Any]) -> pb.Event:
    """An `Event` from an EventDTO (GetUserHistory: the admin history's view of the event)."""
    return pb.Event(
        position=dto["position"],
        event_id=dto["event_id"],
        event_type=dto["event_type"],
        user_id=dto["user_id"],
        aggregate_id=dto["aggregate_id"],
        aggregate_version=dto["aggregate_version"],
        timestamp=timestamp(dto["timestamp"]),
        schema_version=dto["schema_version"],
        payload=_encoder.encode(dto["payload"]).decode(),
        metadata=dto["metadata"],
    )


def event_from_entry(entry: Entry) -> pb.Event:
    """An `Event` carrying exactly the fields of the Redis Stream entry (SPEC §8.2) for StreamEvents."""
    return pb.Event(
        position=int(entry.position),
        event_id=entry.event_id,
        event_type=entry.event_type,
        user_id=entry.user_id,
        aggregate_id=entry.aggregate_id,
        aggregate_version=int(entry.aggregate_version),
        timestamp=timestamp(entry.timestamp),
        schema_version=int(entry.schema_version),
        payload=entry.payload,
        metadata=_metadata.decode(entry.metadata),
    )

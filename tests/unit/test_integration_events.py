"""The public stream contract (SPEC §8.2/§8.3): every published type mapped, field by field."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pandora_users.domain import events as ev
from pandora_users.timestamps import rfc3339
from projections.integration_events import (
    BY_TYPE,
    ENTRY_FIELDS,
    EVENT_ID_NAMESPACE,
    UnmappedEvent,
    event_id,
    to_entry,
)
from tests.unit.given import T0

# SPEC §8.3, copied by hand: the test fails when the contract drifts from the specification.
SPEC_PAYLOADS: dict[str, tuple[str, ...]] = {
    "user.registered": ("email", "first_name", "last_name", "role", "kyc_status"),
    "user.email_verification.requested": ("email", "first_name", "token", "link", "expires_at"),
    "user.email.verified": ("email", "verified_at", "method"),
    "user.logged_in": ("session_id", "email", "ip_address", "user_agent", "audience", "expires_at"),
    "user.logged_out": ("session_id", "audience"),
    "user.session.revoked": ("session_id", "audience", "reason"),
    "user.logged_out_all": ("session_ids", "session_count"),
    "user.token_reuse_detected": ("session_id", "audience", "ip_address", "user_agent"),
    "user.profile.updated": ("email", "first_name", "last_name", "changed_fields"),
    "user.password.changed": ("email", "method"),
    "user.password_reset.requested": ("email", "first_name", "token", "link", "expires_at"),
    "user.kyc.updated": ("email", "kyc_status", "old_status"),
    "user.role.changed": ("email", "role", "old_role"),
    "user.locked": ("email", "locked_until", "failed_attempts"),
    "user.unlocked": ("email", "method"),
    "user.deleted": ("email", "deleted_at"),
    "user.restored": ("email", "restored_at"),
    "user.erased": ("erased_at",),
}
PERSONAL = {"email", "first_name", "last_name", "ip_address", "user_agent"}
LINK_TYPES = ("user.email_verification.requested", "user.password_reset.requested")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
NAMESPACE = uuid.UUID("9f1c2d3e-5a6b-4c7d-8e9f-a0b1c2d3e4f5")
METADATA = {
    "actor_id": "0d3f0000-0000-4000-8000-000000000001",
    "actor_role": "admin",
    "ip_address": "10.0.0.7",
    "user_agent": "pytest",
    "request_id": "req-1",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "reason": "documents checked",
}
SESSION_ID = "5b0c3a56-1f2e-4d7a-9c8b-0a1b2c3d4e5f"
VALUES: dict[str, Any] = {
    "email": "ann@example.com",
    "first_name": "Ann",
    "last_name": "Lee",
    "role": "user",
    "old_role": "admin",
    "kyc_status": "verified",
    "old_status": "pending",
    "session_id": SESSION_ID,
    "session_ids": [SESSION_ID],
    "session_count": 1,
    "audience": "pandora-api",
    "reason": "logout_all",
    "ip_address": "10.0.0.7",
    "user_agent": "Mozilla/5.0",
    "changed_fields": ["first_name"],
    "failed_attempts": 3,
    "token": "tok-123",
    "link": "http://localhost:3000/verify-email?token=tok-123",
}
METHODS = {"user.email.verified": "link", "user.password.changed": "change", "user.unlocked": "admin"}


def sample(event_type: str, *, at: datetime = T0, **overrides: Any) -> ev.DomainEvent:
    """A valid domain event of a published type, one hour after `at` for every payload timestamp."""
    cls = ev.BY_EVENT_TYPE[event_type]
    payload: dict[str, Any] = {}
    for name in ev.payload_fields(cls):
        if name == "method":
            payload[name] = METHODS[event_type]
        elif cls.__annotations__.get(name) == "datetime":
            payload[name] = at + timedelta(hours=1)
        else:
            payload[name] = VALUES[name]
    payload.update(overrides)
    return cls(
        originator_id=uuid.UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7"),
        originator_version=4,
        timestamp=at + timedelta(microseconds=123456),
        user_id=uuid.UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7"),
        metadata=dict(METADATA),
        **payload,
    )


def _decoded(event_type: str, now: datetime = T0, **overrides: Any) -> dict[str, Any]:
    entry = to_entry(1042, sample(event_type, **overrides), now)
    assert entry is not None
    decoded: dict[str, Any] = json.loads(entry.payload)
    return decoded


def test_the_contract_covers_exactly_the_published_domain_types() -> None:
    published = {cls.EVENT_TYPE for cls in ev.ALL_EVENTS if cls.EVENT_TYPE}
    assert set(BY_TYPE) == set(SPEC_PAYLOADS) == published
    assert {BY_TYPE[t].domain.EVENT_TYPE for t in BY_TYPE} == published
    assert all(t == BY_TYPE[t].domain.EVENT_TYPE for t in BY_TYPE)


@pytest.mark.parametrize("event_type", sorted(SPEC_PAYLOADS))
def test_every_type_maps_to_string_fields_and_exactly_the_spec_payload(event_type: str) -> None:
    event = sample(event_type)
    entry = to_entry(1042, event, T0)
    assert entry is not None
    fields = entry.fields()
    assert list(fields) == list(ENTRY_FIELDS)
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["event_type"] == event_type
    assert fields["event_id"] == str(uuid.uuid5(NAMESPACE, f"{event.originator_id}:4"))
    assert fields["user_id"] == fields["aggregate_id"] == "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    assert (fields["aggregate_version"], fields["position"], fields["schema_version"]) == ("4", "1042", "1")
    assert fields["timestamp"] == "2026-03-01T12:00:00.123456Z"
    payload = json.loads(fields["payload"])
    assert tuple(payload) == SPEC_PAYLOADS[event_type]
    for name, value in payload.items():
        if name.endswith(("_at", "_until")):
            assert value == "2026-03-01T13:00:00.000000Z"
        elif name == "method":
            assert value == METHODS[event_type]
        else:
            assert value == VALUES[name], name
    assert json.loads(fields["metadata"]) == METADATA


def test_the_event_id_is_deterministic_and_differs_per_version() -> None:
    a = to_entry(1, sample("user.deleted"), T0)
    b = to_entry(99, sample("user.deleted"), T0 + timedelta(days=3))
    c = to_entry(1, msgspec.structs.replace(sample("user.deleted"), originator_version=5), T0)
    assert a is not None and b is not None and c is not None
    assert a.event_id == b.event_id != c.event_id


@pytest.mark.parametrize("event_type", LINK_TYPES)
def test_link_token_only_while_unexpired(event_type: str) -> None:
    live = _decoded(event_type, now=T0 + timedelta(minutes=59))
    assert live["token"] == "tok-123" and live["link"].endswith("token=tok-123")
    at_expiry = _decoded(event_type, now=T0 + timedelta(hours=1))
    later = _decoded(event_type, now=T0 + timedelta(days=2))
    for payload in (at_expiry, later):
        assert "token" not in payload and "link" not in payload
        assert tuple(payload) == ("email", "first_name", "expires_at")


@pytest.mark.parametrize("event_type", LINK_TYPES)
def test_no_link_token_after_erasure_even_when_unexpired(event_type: str) -> None:
    erased: dict[str, Any] = {name: ev.ERASED for name in ("email", "first_name", "token", "link")}
    payload = _decoded(event_type, now=T0, **erased)
    assert payload == {"email": ev.ERASED, "first_name": ev.ERASED, "expires_at": "2026-03-01T13:00:00.000000Z"}


@pytest.mark.parametrize("event_type", sorted(t for t, f in SPEC_PAYLOADS.items() if PERSONAL & set(f)))
def test_erased_personal_fields_are_published_as_erased(event_type: str) -> None:
    personal: dict[str, Any] = {name: ev.ERASED for name in PERSONAL & set(SPEC_PAYLOADS[event_type])}
    meta = {**METADATA, "ip_address": ev.ERASED, "user_agent": ev.ERASED}
    event = msgspec.structs.replace(sample(event_type, **personal), metadata=meta)
    entry = to_entry(7, event, T0)
    assert entry is not None
    payload = json.loads(entry.payload)
    assert all(payload[name] == ev.ERASED for name in personal)
    assert json.loads(entry.metadata)["ip_address"] == ev.ERASED


def test_missing_ip_and_user_agent_are_null() -> None:
    payload = _decoded("user.logged_in", ip_address=None, user_agent=None)
    assert payload["ip_address"] is None and payload["user_agent"] is None


def test_internal_events_map_to_nothing() -> None:
    for cls in (ev.EmailIndexClaimed, ev.EmailIndexReleased):
        event = cls(originator_id=uuid.uuid4(), originator_version=1, timestamp=T0, user_id=uuid.uuid4())
        assert to_entry(3, event, T0) is None


def test_a_published_domain_type_without_a_contract_is_an_error() -> None:
    class Surprise(ev.DomainEvent, frozen=True, kw_only=True):
        EVENT_TYPE = "user.surprised"

    event = Surprise(originator_id=uuid.uuid4(), originator_version=1, timestamp=T0, user_id=uuid.uuid4())
    with pytest.raises(UnmappedEvent):
        to_entry(3, event, T0)


def test_metadata_keeps_only_spec_keys_with_values() -> None:
    meta = {"actor_id": "cli", "reason": "", "internal_hint": "x", "traceparent": "00-ab-cd-01", "service": "kyc"}
    event = msgspec.structs.replace(sample("user.erased"), metadata=meta)
    entry = to_entry(3, event, T0)
    assert entry is not None
    assert json.loads(entry.metadata) == {"actor_id": "cli", "traceparent": "00-ab-cd-01", "service": "kyc"}


def test_timestamps_are_utc_with_six_digits() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 3, 1, 14, 0, tzinfo=plus_two)) == "2026-03-01T12:00:00.000000Z"
    assert rfc3339(datetime(2026, 3, 1, 12, 0, 0, 7, tzinfo=UTC)) == "2026-03-01T12:00:00.000007Z"
    assert TS.match(rfc3339(datetime.now(UTC)))


@given(st.uuids(), st.integers(min_value=1, max_value=2**31))
def test_the_event_id_is_the_uuid5_of_the_aggregate_and_version(aggregate_id: uuid.UUID, version: int) -> None:
    expected = str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{aggregate_id}:{version}"))
    assert event_id(aggregate_id, version) == expected == event_id(str(aggregate_id), version)


@given(st.datetimes(timezones=st.timezones() | st.none()))
def test_a_moment_is_written_in_utc_with_six_digits_and_z(moment: datetime) -> None:
    text = rfc3339(moment)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text)
    # Compared in UTC: an aware time in a DST gap or fold never equals one of another zone (PEP 495).
    utc = moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    assert datetime.fromisoformat(text) == utc

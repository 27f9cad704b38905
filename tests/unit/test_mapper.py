"""Round trips of every event class through the mapper, with and without erasure (hypothesis)."""

from __future__ import annotations

import typing
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pandora_users.domain import events as ev
from pandora_users.store.crypto import is_encrypted
from pandora_users.store.mapper import MissingDataKey, PersonalDataMapper

TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
METADATA = st.fixed_dictionaries(
    {},
    optional={
        "actor_id": TEXT,
        "actor_role": TEXT,
        "request_id": TEXT,
        "reason": TEXT,
        "ip_address": TEXT,
        "user_agent": TEXT,
        "trace_id": TEXT,
    },
)


class Keys:
    """An in-memory DataKeys: the mapper's protocol, not a mock of PostgreSQL."""

    def __init__(self) -> None:
        self.keys: dict[uuid.UUID, bytes] = {}

    def get(self, user_id: uuid.UUID) -> bytes | None:
        return self.keys.get(user_id)


def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    if tp is str:
        return TEXT
    if tp is int:
        return st.integers(0, 2**31)
    if tp is datetime:
        return st.datetimes(timezones=st.just(UTC))
    if tp is uuid.UUID:
        return st.uuids()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return st.lists(_strategy(args[0]), max_size=3)
    if origin is dict:
        return METADATA
    if type(None) in args:
        return st.none() | _strategy(next(a for a in args if a is not type(None)))
    raise TypeError(tp)


def events_of(cls: type[ev.DomainEvent]) -> st.SearchStrategy[ev.DomainEvent]:
    hints = typing.get_type_hints(cls)
    fields = {name: _strategy(hints[name]) for name in cls.__struct_fields__}
    fields["originator_version"] = st.integers(1, 10_000)
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


ANY_EVENT = st.sampled_from(ev.ALL_EVENTS).flatmap(events_of)


@settings(max_examples=300, deadline=None)
@given(ANY_EVENT)
def test_round_trip_with_key(event: ev.DomainEvent) -> None:
    keys = Keys()
    keys.keys[event.user_id] = bytes(32)
    mapper = PersonalDataMapper(keys)
    stored = mapper.to_stored_event(event)
    assert stored.topic == type(event).TOPIC
    assert mapper.to_domain_event(stored) == event


@settings(max_examples=300, deadline=None)
@given(ANY_EVENT)
def test_after_erasure_personal_fields_read_erased_and_the_rest_survives(event: ev.DomainEvent) -> None:
    keys = Keys()
    keys.keys[event.user_id] = bytes(range(32))
    mapper = PersonalDataMapper(keys)
    stored = mapper.to_stored_event(event)
    del keys.keys[event.user_id]
    decoded: ev.DomainEvent = mapper.to_domain_event(stored)
    cls = type(event)
    for name in cls.__struct_fields__:
        before, after = getattr(event, name), getattr(decoded, name)
        if name in cls.PERSONAL and before is not None:
            assert after == ev.ERASED
        elif name == "metadata":
            expected = {k: (ev.ERASED if k in ev.PERSONAL_METADATA else v) for k, v in before.items()}
            assert after == expected
        else:
            assert after == before


@settings(max_examples=100, deadline=None)
@given(ANY_EVENT)
def test_personal_data_never_stored_in_clear(event: ev.DomainEvent) -> None:
    keys = Keys()
    keys.keys[event.user_id] = bytes(32)
    state = msgspec.json.decode(PersonalDataMapper(keys).to_stored_event(event).state)
    for name in type(event).PERSONAL:
        assert state[name] is None or is_encrypted(state[name])
    for key in ev.PERSONAL_METADATA:
        assert key not in state["metadata"] or is_encrypted(state["metadata"][key])


def test_personal_event_without_key_is_refused() -> None:
    uid, now = uuid.uuid4(), datetime.now(UTC)
    event = ev.UserRegistered(
        originator_id=uid,
        originator_version=1,
        timestamp=now,
        user_id=uid,
        email="a@b.co",
        first_name="A",
        last_name="B",
        role="user",
        kyc_status="pending",
    )
    with pytest.raises(MissingDataKey):
        PersonalDataMapper(Keys()).to_stored_event(event)


def test_ciphertext_bound_to_its_event() -> None:
    """A sealed field moved to another event (other id/version) does not decrypt."""
    keys = Keys()
    uid = uuid.uuid4()
    keys.keys[uid] = bytes(32)
    mapper = PersonalDataMapper(keys)
    now = datetime.now(UTC)
    a = ev.UserDeleted(
        originator_id=uid, originator_version=2, timestamp=now, user_id=uid, email="a@b.co", deleted_at=now
    )
    b = msgspec.structs.replace(a, originator_version=3)
    stored_a, stored_b = mapper.to_stored_event(a), mapper.to_stored_event(b)
    swapped = msgspec.json.decode(stored_b.state)
    swapped["email"] = msgspec.json.decode(stored_a.state)["email"]
    forged = type(stored_b)(stored_b.originator_id, 3, stored_b.topic, msgspec.json.encode(swapped))
    with pytest.raises(Exception, match="authenticate"):
        mapper.to_domain_event(forged)

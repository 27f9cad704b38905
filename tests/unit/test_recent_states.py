"""Recent user states: served only at the version they were loaded at, and only while their data key is cached."""

from __future__ import annotations

import uuid

import pytest

from pandora_users.domain.context import AggregateState
from pandora_users.store.keys import KeyStore
from pandora_users.store.recent import RecentStates
from tests.unit.test_key_store import KEK, Clock


class State(AggregateState, frozen=True, kw_only=True):
    name: str


def keys_with(clock: Clock, *users: uuid.UUID) -> KeyStore:
    keys = KeyStore(KEK, lambda _user: None, ttl=60.0, clock=clock)
    for user in users:
        keys.new_key(user)  # cached, as a load's decryption leaves it
    return keys


def test_a_state_is_served_at_its_version_only() -> None:
    user = uuid.uuid4()
    recent: RecentStates[State] = RecentStates(keys_with(Clock(), user))
    state = State(id=user, version=3, name="ann")
    recent.put(state)
    assert recent.get(user, 3) is state
    assert recent.get(user, 4) is None  # the user moved on: the caller loads the new state
    assert recent.get(user, 2) is None
    assert recent.get(uuid.uuid4(), 3) is None


def test_a_state_outlives_neither_its_key_nor_an_erasure() -> None:
    clock = Clock()
    ann, bob = uuid.uuid4(), uuid.uuid4()
    keys = keys_with(clock, ann, bob)
    recent: RecentStates[State] = RecentStates(keys)
    recent.put(State(id=ann, version=1, name="ann"))
    recent.put(State(id=bob, version=1, name="bob"))
    keys.forget(ann)  # what an erasure does, here or (by NOTIFY) in another process
    assert recent.get(ann, 1) is None
    assert recent.get(bob, 1) is not None
    clock.now += 60.0  # the key cache's TTL: the personal data goes with the key
    assert recent.get(bob, 1) is None
    assert len(recent) == 0


def test_the_least_recently_used_state_goes_first() -> None:
    users = [uuid.uuid4() for _ in range(3)]
    recent: RecentStates[State] = RecentStates(keys_with(Clock(), *users), size=2)
    recent.put(State(id=users[0], version=1, name="a"))
    recent.put(State(id=users[1], version=1, name="b"))
    assert recent.get(users[0], 1) is not None  # now the most recently used
    recent.put(State(id=users[2], version=1, name="c"))
    assert [recent.get(u, 1) is not None for u in users] == [True, False, True]
    with pytest.raises(ValueError, match="at least 1"):
        RecentStates(keys_with(Clock()), size=0)


def test_the_latest_state_is_served_at_any_version_and_never_replaced_by_an_older_one() -> None:
    user = uuid.uuid4()
    recent: RecentStates[State] = RecentStates(keys_with(Clock(), user))
    newer, older = State(id=user, version=4, name="annette"), State(id=user, version=3, name="ann")
    recent.put(newer)
    recent.put(older)  # a thread that loaded before another's newer load finishes after it
    assert recent.latest(user) == newer and recent.get(user, 3) is None and recent.get(user, 4) == newer
    assert recent.latest(uuid.uuid4()) is None

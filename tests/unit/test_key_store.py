"""The data-key cache: what a cache clear (after a missed-notification window) keeps and drops."""

from __future__ import annotations

import uuid

from pandora_users.store.keys import FRESH_WINDOW, KeyStore

KEK = bytes(range(32))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(stored: dict[uuid.UUID, bytes], clock: Clock) -> KeyStore:
    return KeyStore(KEK, stored.get, ttl=60.0, clock=clock)


def test_a_clear_keeps_a_key_made_for_a_save_that_may_not_have_committed() -> None:
    clock, stored = Clock(), {}
    keys = store(stored, clock)
    user = uuid.uuid4()
    key, _wrapped = keys.new_key(user)  # not in the database yet: its save is still committing
    keys.clear()
    assert keys.get(user) == key
    clock.now += FRESH_WINDOW  # long after any save: the database is the source again
    assert keys.get(user) is None


def test_a_clear_drops_keys_read_from_the_database() -> None:
    clock, stored = Clock(), {}
    keys = store(stored, clock)
    user = uuid.uuid4()
    _key, wrapped = keys.new_key(user)
    stored[user] = wrapped
    clock.now += FRESH_WINDOW
    assert keys.get(user) is not None  # cached again from the database (TTL 60 s)
    del stored[user]  # destroyed by an erasure whose notification this process missed
    keys.clear()
    assert keys.get(user) is None


def test_forget_drops_a_fresh_key_too() -> None:
    keys = store({}, Clock())
    user = uuid.uuid4()
    keys.new_key(user)
    keys.forget(user)  # its save failed, or the user was erased
    keys.clear()
    assert keys.get(user) is None


def test_the_fresh_keys_are_only_those_of_the_last_window() -> None:
    clock = Clock()
    keys = store({}, clock)
    for _ in range(100):
        keys.new_key(uuid.uuid4())
    clock.now += FRESH_WINDOW
    keys.new_key(uuid.uuid4())
    assert len(keys._fresh) == 1  # the older ones were dropped on the way, oldest first

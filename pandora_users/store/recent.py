"""Users this process loaded lately, so loading one again decodes only what was stored since.

A command loads its user from the state held here brought forward with the events after it (usually none or
one), not from every event of the user decrypted and folded again. Refresh learns the user's current version in
the same statement that rotates the token; when that very version is held here, it reads no events at all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar
from uuid import UUID

from pandora_users.domain.context import AggregateState
from pandora_users.store.keys import KeyStore

A = TypeVar("A", bound=AggregateState)

DEFAULT_SIZE = 4096


class RecentStates(Generic[A]):
    """The last `size` states loaded, by aggregate id, for aggregates whose personal data is encrypted with
    their own id's data key (users).

    `get` serves a state only at the version asked for; `latest` serves it at its own version, for a caller that
    brings it forward with the events stored since (states are immutable, and versions only move forward). Either
    only while the key that decrypted it is still in the key cache: personal data stays in memory no longer than
    its key does, and an erasure in any process, which drops the key everywhere, drops it too.
    """

    def __init__(self, keys: KeyStore, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._keys = keys
        self._size = size
        self._states: OrderedDict[UUID, A] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, aggregate_id: UUID, version: int) -> A | None:
        """The state at exactly `version`, if it is the one held."""
        state = self.latest(aggregate_id)
        return state if state is not None and state.version == version else None

    def latest(self, aggregate_id: UUID) -> A | None:
        """The state held for the aggregate, whatever its version (the caller brings it forward)."""
        with self._lock:
            state = self._states.get(aggregate_id)
            if state is None:
                return None
            self._states.move_to_end(aggregate_id)
        if not self._keys.holds(aggregate_id):
            self.discard(aggregate_id)
            return None
        return state

    def put(self, state: A) -> None:
        """Hold `state`, unless a newer version is held (two threads loading the same user)."""
        with self._lock:
            held = self._states.get(state.id)
            if held is None or held.version <= state.version:
                self._states[state.id] = state
            self._states.move_to_end(state.id)
            while len(self._states) > self._size:
                self._states.popitem(last=False)

    def discard(self, aggregate_id: UUID) -> None:
        with self._lock:
            self._states.pop(aggregate_id, None)

    def __len__(self) -> int:
        return len(self._states)

"""The key store: one random 256-bit data key per user, kept wrapped by the key-encryption key.

Unwrapped keys are cached for at most `ttl` seconds. A key created by a command is cached before the save
that writes its wrapped form (in the same transaction as the user's first events), so the mapper can
encrypt those events.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from uuid import UUID

from pandora_users.store.crypto import open_sealed, seal

SELECT_KEY = "SELECT wrapped_key FROM subject_keys WHERE user_id = %s"
INSERT_KEY = "INSERT INTO subject_keys (user_id, wrapped_key) VALUES (%s, %s)"
DELETE_KEY = "DELETE FROM subject_keys WHERE user_id = %s"


FRESH_WINDOW = 10.0  # seconds a key made for a save outlives a cache clear (a save commits well within it)


class KeyStore:
    """Implements the mapper's `DataKeys`: wrapped keys in PostgreSQL, a short-lived cache in memory."""

    def __init__(
        self,
        kek: bytes,
        fetch_wrapped: Callable[[UUID], bytes | None],
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(kek) != 32:
            raise ValueError("the key-encryption key must be 32 bytes")
        self._kek = kek
        self._fetch = fetch_wrapped
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[UUID, tuple[bytes, float]] = {}
        # Keys made by `new_key` for a save that may not have committed yet, and when they were made (oldest first).
        self._fresh: OrderedDict[UUID, float] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, user_id: UUID) -> bytes | None:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(user_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        wrapped = self._fetch(user_id)
        if wrapped is None:
            self.forget(user_id)
            return None
        key = open_sealed(self._kek, wrapped, user_id.bytes)
        self._remember(user_id, key)
        return key

    def holds(self, user_id: UUID) -> bool:
        """Whether this process has the user's key in its cache, unexpired (without fetching it)."""
        with self._lock:
            hit = self._cache.get(user_id)
        return hit is not None and hit[1] > self._clock()

    def new_key(self, user_id: UUID) -> tuple[bytes, bytes]:
        """A fresh data key (cached for the coming save) and its wrapped form to store."""
        key = os.urandom(32)
        self._remember(user_id, key)
        now = self._clock()
        with self._lock:
            while self._fresh and now - next(iter(self._fresh.values())) >= FRESH_WINDOW:
                self._fresh.popitem(last=False)  # the oldest: its save has long finished
            self._fresh[user_id] = now
            self._fresh.move_to_end(user_id)
        return key, seal(self._kek, key, user_id.bytes)

    def forget(self, user_id: UUID) -> None:
        """Drop a cached key (after erasure, or when a save that created it failed)."""
        with self._lock:
            self._cache.pop(user_id, None)
            self._fresh.pop(user_id, None)

    def clear(self) -> None:
        """Drop every cached key, except those just made for a save that may still be committing: the database
        does not have them yet, so dropping one would fail that save. They are kept at most FRESH_WINDOW."""
        now = self._clock()
        with self._lock:
            keep = [(u, made) for u, made in self._fresh.items() if now - made < FRESH_WINDOW and u in self._cache]
            self._cache = {u: (self._cache[u][0], made + FRESH_WINDOW) for u, made in keep}
            self._fresh = OrderedDict(keep)

    def _remember(self, user_id: UUID, key: bytes) -> None:
        with self._lock:
            self._cache[user_id] = (key, self._clock() + self._ttl)


def psycopg_fetcher(datastore: Any) -> Callable[[UUID], bytes | None]:
    """Read one wrapped key through the event store's psycopg pool."""

    def fetch(user_id: UUID) -> bytes | None:
        with datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(SELECT_KEY, (user_id,), prepare=True)
            row = curs.fetchone()
        return None if row is None else bytes(row["wrapped_key"])

    return fetch


KEY_DESTROYED_CHANNEL = "pandora_key_destroyed"
NOTIFY_DESTROYED = "SELECT pg_notify('pandora_key_destroyed', %s)"


class KeyInvalidation:
    """Drops a destroyed key from this process's cache as soon as any process erases a user.

    The NOTIFY is sent in the erasing transaction, so it arrives only if the erasure committed. After a lost
    connection the whole cache is cleared, since notifications may have been missed meanwhile.
    """

    def __init__(self, keys: KeyStore, conninfo: str, *, retry: float = 1.0) -> None:
        self.keys = keys
        self.conninfo = conninfo
        self.retry = retry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-invalidation", daemon=True)
        self.listening = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {KEY_DESTROYED_CHANNEL}")
                    self.keys.clear()
                    self.listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5, stop_after=1):
                            self.keys.forget(UUID(note.payload))
            except (psycopg.Error, ValueError):
                self.listening.clear()
                self._stop.wait(self.retry)

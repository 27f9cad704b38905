"""An erasure in one process drops the data key from every other process's cache at once."""

from __future__ import annotations

import time
from typing import Any

from pandora_users.commands import admin, registration
from pandora_users.commands.base import WriteSide
from pandora_users.domain import events as ev
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.store.app import EventStore, postgres_env
from projections.runner import Runner
from tests.conftest import TEST_KEK
from tests.integration.test_registration import reg


async def test_other_process_forgets_the_key_on_erasure(write_side: WriteSide, database_url: str) -> None:
    other = EventStore(postgres_env(database_url, pool_size=1, max_overflow=2, lock_timeout=5), TEST_KEK)
    try:
        other.listen_for_key_destruction(database_url)
        assert other._invalidation.listening.wait(10)  # type: ignore[attr-defined]
        grant = await registration.register(write_side, reg("cache.me@example.com"), Context())
        cached = other.load(grant.user.id, user_agg.project)
        assert cached is not None and cached.email == "cache.me@example.com"  # the key is now in its cache
        await admin.erase(write_side, grant.user.id, if_match=None, ctx=Context())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and other.keys._cache:
            time.sleep(0.02)
        event = next(iter(other.events.get(grant.user.id)))
        assert isinstance(event, ev.UserRegistered) and event.email == ev.ERASED
    finally:
        other.close()


class Capture:
    """A projection that keeps what it was given."""

    name = "capture"
    topics = ()

    def __init__(self) -> None:
        self.events: list[ev.DomainEvent] = []

    def apply(self, _conn: object, batch: Any) -> None:
        self.events += [envelope.event for envelope in batch]


async def test_a_batch_with_an_erasure_decodes_that_user_as_erased_even_with_a_cached_key(
    write_side: WriteSide, database_url: str
) -> None:
    """The projectors' process may still cache the key when it reads the erasure's batch (the key-destruction
    notice and the events' notice race): the batch drops it first, so nothing is published in clear (SPEC §8.5)."""
    other = EventStore(postgres_env(database_url, pool_size=1, max_overflow=2, lock_timeout=5), TEST_KEK)
    try:
        grant = await registration.register(write_side, reg("shred.me@example.com"), Context())
        assert other.load(grant.user.id, user_agg.project) is not None  # `other` now caches the key
        ctx = Context(metadata={"actor_id": "admin-1", "actor_role": "admin", "ip_address": "198.51.100.7"})
        await admin.erase(write_side, grant.user.id, if_match=None, ctx=ctx)
        assert other.keys.holds(grant.user.id)  # nobody told `other` (it does not listen)
        capture = Capture()
        runner = Runner(other, database_url, capture, batch_size=1000)  # type: ignore[arg-type]
        while runner.step():
            pass
        erased = [e for e in capture.events if isinstance(e, ev.UserErased)]
        assert len(erased) == 1 and erased[0].metadata["ip_address"] == ev.ERASED
        registered = next(e for e in capture.events if isinstance(e, ev.UserRegistered))
        assert registered.email == ev.ERASED and not other.keys.holds(grant.user.id)
    finally:
        other.close()

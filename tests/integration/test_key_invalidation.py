"""An erasure in one process drops the data key from every other process's cache at once."""

from __future__ import annotations

import time

from pandora_users.commands import admin, registration
from pandora_users.commands.base import WriteSide
from pandora_users.domain import events as ev
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.store.app import EventStore, postgres_env
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

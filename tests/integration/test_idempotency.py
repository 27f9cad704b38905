"""Idempotency keys on real Redis (SPEC §2.12): replay, reuse, in progress, abandon, encryption, Redis down."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from api.idempotency import (
    Begin,
    IdempotencyKeyReused,
    IdempotencyStore,
    InvalidIdempotencyKey,
    Outcome,
    RequestInProgress,
    StoredResponse,
    derive_store_key,
    validate_key,
)
from pandora_users.infra.embedded import EmbeddedValkey

DEK = bytes(range(32))
SCOPE = "public|3f1c2a7e-0000-4000-8000-000000000001|POST|/api/v1/auth/refresh"
BODY = b'{"refresh_token":"rt-secret-AAAA"}'
SECRET_IN_RESPONSE = b"rt-new-secret-ZZZZ"
RESPONSE = StoredResponse(
    status=200,
    body=b'{"access_token":"at","refresh_token":"' + SECRET_IN_RESPONSE + b'"}',
    headers={"etag": '"7"', "X-Consistency-Token": "c42", "Set-Cookie": "no=1", "Content-Type": "application/json"},
)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis) -> IdempotencyStore:
    return IdempotencyStore(redis, f"test-{uuid.uuid4().hex[:8]}:", DEK, ttl=60)


async def test_replay_returns_the_first_response(store: IdempotencyStore) -> None:
    assert await store.begin(SCOPE, "k1", BODY) is Begin.new
    await store.complete(SCOPE, "k1", RESPONSE)
    again = await store.begin(SCOPE, "k1", BODY)
    assert again.outcome is Outcome.REPLAY
    assert again.response == StoredResponse(200, RESPONSE.body, {"ETag": '"7"', "X-Consistency-Token": "c42"})
    assert (await store.begin(SCOPE, "k1", BODY)).response == again.response  # replays keep replaying


async def test_a_different_body_is_refused(store: IdempotencyStore) -> None:
    assert await store.begin(SCOPE, "k2", BODY) is Begin.new
    with pytest.raises(IdempotencyKeyReused):  # while in progress
        await store.begin(SCOPE, "k2", BODY + b" ")
    await store.complete(SCOPE, "k2", RESPONSE)
    with pytest.raises(IdempotencyKeyReused) as caught:  # after completion
        await store.begin(SCOPE, "k2", b"{}")
    assert caught.value.code == "idempotency_key_reused" and caught.value.http_status == 422


async def test_concurrent_requests_with_one_key_run_once(store: IdempotencyStore) -> None:
    results = await asyncio.gather(*(store.begin(SCOPE, "k3", BODY) for _ in range(5)), return_exceptions=True)
    assert results.count(Begin.new) == 1
    in_progress = [r for r in results if isinstance(r, RequestInProgress)]
    assert len(in_progress) == 4
    assert in_progress[0].extra == {"retry_after_seconds": 1} and in_progress[0].http_status == 409


async def test_abandon_and_error_responses_free_the_key(store: IdempotencyStore) -> None:
    assert await store.begin(SCOPE, "k4", BODY) is Begin.new
    await store.abandon(SCOPE, "k4")
    assert await store.begin(SCOPE, "k4", b"another body") is Begin.new
    await store.complete(SCOPE, "k4", StoredResponse(status=400, body=b'{"error":"invalid_request"}'))
    assert await store.begin(SCOPE, "k4", BODY) is Begin.new  # 4xx is not stored: the key is free


async def test_abandon_never_drops_a_completed_response(store: IdempotencyStore) -> None:
    assert await store.begin(SCOPE, "k5", BODY) is Begin.new
    await store.complete(SCOPE, "k5", RESPONSE)
    await store.abandon(SCOPE, "k5")
    assert (await store.begin(SCOPE, "k5", BODY)).outcome is Outcome.REPLAY


async def test_keys_are_scoped(store: IdempotencyStore) -> None:
    assert await store.begin(SCOPE, "k6", BODY) is Begin.new
    other_subject = SCOPE.replace("0001", "0002")
    assert await store.begin(other_subject, "k6", BODY) is Begin.new
    assert await store.begin(SCOPE.replace("POST", "PUT"), "k6", BODY) is Begin.new


async def test_redis_holds_no_plaintext_and_values_are_bound_to_their_key(
    store: IdempotencyStore, redis: Redis
) -> None:
    assert await store.begin(SCOPE, "k7", BODY) is Begin.new
    name = store.redis_key(SCOPE, "k7")
    assert 0 < await redis.pttl(name) <= 60_000  # the in-progress lease
    await store.complete(SCOPE, "k7", RESPONSE)
    raw = await redis.get(name)
    assert raw is not None
    for clear in (SECRET_IN_RESPONSE, b"rt-secret-AAAA", b"access_token", b"c42", b"k7", SCOPE.encode()):
        assert clear not in raw
    assert "k7" not in name and "3f1c2a7e" not in name
    assert 0 < await redis.pttl(name) <= 60_000
    # Moved under another (scope, key), the ciphertext does not authenticate: no replay of someone else's data.
    await redis.set(store.redis_key(SCOPE, "k8"), raw)
    assert (await store.begin(SCOPE, "k8", BODY)).outcome is Outcome.UNPROTECTED


async def test_redis_down_runs_unprotected(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path)
    server.start()
    client = Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=0.5)
    store = IdempotencyStore(client, "down:", DEK, ttl=60)
    try:
        assert await store.begin(SCOPE, "k9", BODY) is Begin.new
        server.stop()
        assert await store.begin(SCOPE, "k9", BODY) is Begin.unprotected
        await store.complete(SCOPE, "k9", RESPONSE)  # must not raise
        await store.abandon(SCOPE, "k9")
        assert store.unprotected == 3
    finally:
        server.stop()
        await client.aclose()


def test_key_validation() -> None:
    assert validate_key(None) is None
    assert validate_key("a") == "a"
    assert validate_key(" ~!" + "x" * 252) == " ~!" + "x" * 252
    for bad in ("", "x" * 256, "tab\there", "del\x7f", "é", "nul\x00"):
        with pytest.raises(InvalidIdempotencyKey) as caught:
            validate_key(bad)
        assert caught.value.http_status == 400


def test_store_key_is_derived() -> None:
    derived = derive_store_key(DEK)
    assert len(derived) == 32 and derived != DEK and derived == derive_store_key(DEK)
    assert derive_store_key(os.urandom(32)) != derived
    with pytest.raises(ValueError):
        derive_store_key(b"short")


async def test_an_expired_lease_frees_the_key_and_the_late_completion_is_not_stored(redis: Redis) -> None:
    store = IdempotencyStore(redis, f"test-{uuid.uuid4().hex[:8]}:", DEK, ttl=60, lease=0.3)
    assert await store.begin(SCOPE, "k10", BODY) is Begin.new
    await asyncio.sleep(0.4)  # the first request hangs past its lease; a retry takes over
    assert await store.begin(SCOPE, "k10", BODY) is Begin.new
    await asyncio.sleep(0.4)
    await store.complete(SCOPE, "k10", RESPONSE)  # the marker it set is gone: nothing stored
    assert await store.begin(SCOPE, "k10", BODY) is Begin.new

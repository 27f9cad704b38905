"""Argon2id hashing and its bounded pool (SPEC §7.2)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import argon2
import pytest
from loguru import logger

from pandora_users.domain.errors import ServiceBusy
from pandora_users.security.hashing import Argon2Params, PasswordHasher, VerifyResult

CHEAP = Argon2Params(memory_kib=8192, time_cost=1, parallelism=1)


def make_hasher(
    params: Argon2Params = CHEAP, *, slots: int = 2, queue: int = 4, timeout: float = 5.0
) -> PasswordHasher:
    return PasswordHasher(params, max_concurrency=slots, queue_size=queue, queue_timeout=timeout)


@pytest.fixture
def error_logs() -> Iterator[list[str]]:
    records: list[str] = []
    sink_id = logger.add(lambda message: records.append(str(message)), level="ERROR", format="{message}")
    yield records
    logger.remove(sink_id)


class Gate:
    """Stands in for the blocking Argon2 call: each call waits in its worker thread until opened."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.started = 0

    def __call__(self, *_: Any) -> str:
        self.started += 1
        self.opened.wait(10)
        return "$argon2id$gated"


def gated(hasher: PasswordHasher) -> Gate:
    gate = Gate()
    hasher._argon2.hash = gate  # type: ignore[method-assign,assignment]
    return gate


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_round_trip_and_phc_format() -> None:
    hasher = make_hasher()
    stored = await hasher.hash("correct horse battery staple")
    assert stored.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert await hasher.verify(stored, "correct horse battery staple") == VerifyResult(ok=True, needs_rehash=False)
    assert await hasher.verify(stored, "correct horse battery stapler") == VerifyResult(ok=False)
    assert hasher.in_flight == 0
    assert hasher.queue_depth == 0
    hasher.close()


async def test_salts_differ() -> None:
    hasher = make_hasher()
    assert await hasher.hash("same password") != await hasher.hash("same password")
    hasher.close()


async def test_password_is_nfkc_normalised_before_hashing() -> None:
    hasher = make_hasher()
    stored = await hasher.hash("\ufb01rst-password")  # "ﬁ" ligature
    assert (await hasher.verify(stored, "first-password")).ok
    hasher.close()


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "not a hash",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
        "$argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHQ",  # truncated
        "$argon2id$v=19$m=8192,t=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",  # missing p
        "$argon2id$v=19$m=8192,t=1,p=1$!!!!$????",
        "$argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNo\u00e9",  # not ASCII
    ],
)
async def test_malformed_stored_hash_fails_without_exception(stored: str, error_logs: list[str]) -> None:
    hasher = make_hasher()
    assert await hasher.verify(stored, "whatever-password") == VerifyResult(ok=False)
    assert error_logs, "a malformed stored hash is logged at ERROR"
    if stored:
        assert all(stored not in line for line in error_logs), "the hash itself is never logged"
    hasher.close()


async def test_other_argon2_variant_is_another_format(error_logs: list[str]) -> None:
    argon2i = argon2.PasswordHasher(memory_cost=8192, parallelism=1, type=argon2.Type.I).hash("pw-12345678")
    hasher = make_hasher()
    assert await hasher.verify(argon2i, "pw-12345678") == VerifyResult(ok=False)
    assert error_logs
    hasher.close()


async def test_wrong_password_is_not_logged(error_logs: list[str]) -> None:
    hasher = make_hasher()
    stored = await hasher.hash("right-password")
    assert not (await hasher.verify(stored, "wrong-password")).ok
    assert error_logs == []
    hasher.close()


async def test_needs_rehash_after_parameter_change() -> None:
    old = make_hasher(CHEAP)
    stored = await old.hash("correct horse battery staple")
    new = make_hasher(Argon2Params(memory_kib=16384, time_cost=2, parallelism=1))
    result = await new.verify(stored, "correct horse battery staple")
    assert result == VerifyResult(ok=True, needs_rehash=True)  # verified with the stored hash's own params
    assert new.check_needs_rehash(stored)
    assert not old.check_needs_rehash(stored)
    longer_hash = make_hasher(Argon2Params(memory_kib=8192, time_cost=1, parallelism=1, hash_length=64))
    assert longer_hash.check_needs_rehash(stored)
    assert new.check_needs_rehash("garbage")
    assert (await new.verify(stored, "wrong")) == VerifyResult(ok=False, needs_rehash=False)
    old.close()
    new.close()
    longer_hash.close()


async def test_spec_default_parameters() -> None:
    hasher = make_hasher(Argon2Params())
    stored = await hasher.hash("correct horse battery staple")
    prefix, salt, digest = stored.rsplit("$", 2)
    assert prefix == "$argon2id$v=19$m=65536,t=1,p=4"
    assert len(salt) == 22  # 16 bytes, base64 without padding
    assert len(digest) == 43  # 32 bytes
    assert await hasher.verify(stored, "correct horse battery staple") == VerifyResult(ok=True)
    hasher.close()


async def test_verify_dummy_costs_one_verification() -> None:
    hasher = make_hasher()
    await hasher.start()
    dummy = hasher._dummy_hash
    assert dummy is not None
    assert dummy.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    calls: list[str] = []
    real_verify = hasher._argon2.verify

    def counting_verify(stored: str, secret: bytes) -> VerifyResult:
        calls.append(stored)
        return real_verify(stored, secret)

    hasher._argon2.verify = counting_verify  # type: ignore[method-assign,assignment]
    await hasher.verify_dummy("any password at all")
    assert calls == [dummy]
    hasher.close()


async def test_verify_dummy_without_start_makes_the_dummy_once() -> None:
    hasher = make_hasher()
    await asyncio.gather(hasher.verify_dummy("a-password"), hasher.verify_dummy("b-password"))
    first = hasher._dummy_hash
    await hasher.verify_dummy("c-password")
    assert first is not None
    assert hasher._dummy_hash == first
    hasher.close()


async def test_full_queue_fails_at_once() -> None:
    hasher = make_hasher(slots=1, queue=1)
    gate = gated(hasher)
    running = asyncio.create_task(hasher.hash("one"))
    await until(lambda: gate.started == 1)
    waiting = asyncio.create_task(hasher.hash("two"))
    await until(lambda: hasher.queue_depth == 1)
    assert hasher.in_flight == 1

    started = time.monotonic()
    with pytest.raises(ServiceBusy) as caught:
        await hasher.hash("three")
    assert time.monotonic() - started < 0.5
    assert caught.value.extra["retry_after_seconds"] in (1, 2)
    assert caught.value.http_status == 503

    gate.opened.set()
    assert await running == "$argon2id$gated"
    assert await waiting == "$argon2id$gated"
    assert (hasher.in_flight, hasher.queue_depth) == (0, 0)
    hasher.close()


async def test_zero_queue_means_no_waiting() -> None:
    hasher = make_hasher(slots=1, queue=0)
    gate = gated(hasher)
    running = asyncio.create_task(hasher.hash("one"))
    await until(lambda: gate.started == 1)
    with pytest.raises(ServiceBusy):
        await hasher.verify("$argon2id$whatever", "two")
    gate.opened.set()
    await running
    hasher.close()


async def test_queue_timeout_gives_service_busy() -> None:
    hasher = make_hasher(slots=1, queue=4, timeout=0.2)
    gate = gated(hasher)
    running = asyncio.create_task(hasher.hash("one"))
    await until(lambda: gate.started == 1)
    started = time.monotonic()
    with pytest.raises(ServiceBusy) as caught:
        await hasher.hash("two")
    assert 0.15 <= time.monotonic() - started < 2.0
    assert caught.value.extra["retry_after_seconds"] in (1, 2)
    assert hasher.queue_depth == 0
    gate.opened.set()
    await running
    assert hasher.in_flight == 0
    assert await hasher.hash("three") == "$argon2id$gated"  # the slot was not leaked
    hasher.close()


async def test_waiters_are_served_in_order() -> None:
    hasher = make_hasher(slots=1, queue=3)
    gate = gated(hasher)
    order: list[str] = []

    async def job(name: str) -> None:
        await hasher.hash(name)
        order.append(name)

    first = asyncio.create_task(job("a"))
    await until(lambda: gate.started == 1)
    rest = [asyncio.create_task(job(name)) for name in ("b", "c", "d")]
    await until(lambda: hasher.queue_depth == 3)
    gate.opened.set()
    await asyncio.gather(first, *rest)
    assert order == ["a", "b", "c", "d"]
    hasher.close()


async def test_cancelled_caller_keeps_its_slot_until_the_thread_ends() -> None:
    hasher = make_hasher(slots=1, queue=2)
    gate = gated(hasher)
    running = asyncio.create_task(hasher.hash("one"))
    await until(lambda: gate.started == 1)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert hasher.in_flight == 1  # the hash still runs in its thread
    follower = asyncio.create_task(hasher.hash("two"))
    await until(lambda: hasher.queue_depth == 1)
    gate.opened.set()
    assert await follower == "$argon2id$gated"
    await until(lambda: hasher.in_flight == 0)
    hasher.close()


async def test_cancelled_waiter_leaves_the_queue() -> None:
    hasher = make_hasher(slots=1, queue=2)
    gate = gated(hasher)
    running = asyncio.create_task(hasher.hash("one"))
    await until(lambda: gate.started == 1)
    waiter = asyncio.create_task(hasher.hash("two"))
    await until(lambda: hasher.queue_depth == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert hasher.queue_depth == 0
    gate.opened.set()
    await running
    assert (hasher.in_flight, hasher.queue_depth) == (0, 0)
    hasher.close()


async def test_close_fails_waiters_and_refuses_new_work() -> None:
    hasher = make_hasher(slots=1, queue=2)
    gate = gated(hasher)
    running = asyncio.create_task(hasher.hash("one"))
    await until(lambda: gate.started == 1)
    waiter = asyncio.create_task(hasher.hash("two"))
    await until(lambda: hasher.queue_depth == 1)
    hasher.close()
    with pytest.raises(ServiceBusy):
        await waiter
    with pytest.raises(ServiceBusy):
        await hasher.hash("three")
    gate.opened.set()
    assert await running == "$argon2id$gated"  # work already running finishes


async def test_event_loop_stays_responsive_while_hashing() -> None:
    # Real Argon2 work (a few hundred ms per hash on a small machine) on one worker, so a core stays free for
    # the loop: had a hash run on the loop, one tick would take as long as a hash.
    hasher = make_hasher(Argon2Params(memory_kib=65536, time_cost=3, parallelism=1), slots=1, queue=4)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    started = time.monotonic()
    await asyncio.gather(*(hasher.hash(f"password-{i}") for i in range(3)))
    per_hash = (time.monotonic() - started) / 3
    done.set()
    await tick
    assert per_hash > 0.04, "hashing too cheap to tell"
    assert len(gaps) >= 10
    assert max(gaps) < per_hash / 2, f"event loop blocked for {max(gaps):.3f}s (a hash takes {per_hash:.3f}s)"
    hasher.close()


def test_from_settings_and_validation() -> None:
    settings = SimpleNamespace(
        argon2_memory_kib=8192,
        argon2_time_cost=2,
        argon2_parallelism=1,
        argon2_hash_length=16,
        argon2_salt_length=16,
        argon2_max_concurrency=3,
        argon2_queue_size=6,
        argon2_queue_timeout=1.5,
    )
    hasher = PasswordHasher.from_settings(settings)
    assert hasher.params == Argon2Params(8192, 2, 1, 16, 16)
    assert (hasher._slots, hasher._queue_size, hasher._queue_timeout) == (3, 6, 1.5)
    hasher.close()
    with pytest.raises(ValueError, match="max_concurrency"):
        make_hasher(slots=0)
    with pytest.raises(ValueError, match="queue_timeout"):
        make_hasher(timeout=0)


async def test_hashing_threads_run_below_the_event_loops_priority() -> None:
    import os

    from pandora_users.security.hashing import HASHING_NICENESS

    hasher = make_hasher()
    seen: list[int] = []

    def spy(*_: Any) -> str:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return "$argon2id$spied"

    hasher._argon2.hash = spy  # type: ignore[method-assign,assignment]
    try:
        await hasher.hash("a long passphrase")
    finally:
        hasher.close()
    loop_priority = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(19, loop_priority + HASHING_NICENESS)]


async def test_a_full_pool_is_refused_before_any_other_work() -> None:
    hasher = make_hasher(slots=1, queue=1)
    hasher.refuse_if_full()  # idle: nothing to refuse
    gate = gated(hasher)
    running = asyncio.create_task(hasher.hash("one"))
    await until(lambda: gate.started == 1)
    hasher.refuse_if_full()  # a slot is taken, the queue still has room
    waiting = asyncio.create_task(hasher.hash("two"))
    await until(lambda: hasher.queue_depth == 1)
    with pytest.raises(ServiceBusy):
        hasher.refuse_if_full()
    gate.opened.set()
    await asyncio.gather(running, waiting)
    hasher.refuse_if_full()
    hasher.close()

"""Argon2id password hashing (SPEC §7.2) in a bounded worker pool that never blocks the event loop.

libargon2 (argon2-cffi's bindings, on memory each thread keeps: `argon2_memory`) runs without the GIL, so
`max_concurrency` worker threads hash in parallel.
Admission is decided on the event loop: at most `max_concurrency` calls hold a slot, at most `queue_size` wait
for one, each for at most `queue_timeout` seconds; beyond either bound the call fails with `ServiceBusy` (503,
`Retry-After` 1 or 2 s).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from loguru import logger
from opentelemetry import trace

from pandora_users.domain.errors import ServiceBusy
from pandora_users.observability import metrics as m
from pandora_users.observability import tracing
from pandora_users.security import argon2_memory
from pandora_users.security.passwords import normalize_password

T = TypeVar("T")

_PHC_PREFIX = "$argon2id$"
ARGON2_VERSION = 0x13


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id cost parameters; the defaults are SPEC §7.2's."""

    memory_kib: int = 65_536
    time_cost: int = 1
    parallelism: int = 4
    hash_length: int = 32
    salt_length: int = 16

    def to_parameters(self) -> argon2.Parameters:
        return argon2.Parameters(
            type=argon2.Type.ID,
            version=ARGON2_VERSION,
            salt_len=self.salt_length,
            hash_len=self.hash_length,
            time_cost=self.time_cost,
            memory_cost=self.memory_kib,
            parallelism=self.parallelism,
        )


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    needs_rehash: bool = False


class HashingSettings(Protocol):
    """The attributes of `Settings` the hasher reads (structural: this module does not import settings)."""

    @property
    def argon2_memory_kib(self) -> int: ...
    @property
    def argon2_time_cost(self) -> int: ...
    @property
    def argon2_parallelism(self) -> int: ...
    @property
    def argon2_hash_length(self) -> int: ...
    @property
    def argon2_salt_length(self) -> int: ...
    @property
    def argon2_max_concurrency(self) -> int: ...
    @property
    def argon2_queue_size(self) -> int: ...
    @property
    def argon2_queue_timeout(self) -> float: ...


def _secret_bytes(password: str) -> bytes:
    # NFKC on every path (SPEC §7.1; idempotent). surrogatepass: a lone surrogate must not raise mid-login.
    return normalize_password(password).encode("utf-8", "surrogatepass")


def _busy() -> ServiceBusy:
    return ServiceBusy(extra={"retry_after_seconds": random.choice((1, 2))})


class _Argon2:
    """The blocking half: runs in worker threads only."""

    def __init__(self, params: Argon2Params) -> None:
        self.parameters = params.to_parameters()
        self._hasher = argon2.PasswordHasher.from_parameters(self.parameters)  # for hashes of other parameters

    def hash(self, secret: bytes) -> str:
        salt = os.urandom(self.parameters.salt_len)
        return argon2_memory.encode(self.parameters, salt, argon2_memory.raw_hash(secret, salt, self.parameters))

    def verify(self, stored_hash: str, secret: bytes) -> VerifyResult:
        if not (stored_hash.isascii() and stored_hash.startswith(_PHC_PREFIX)):
            logger.error("stored password hash is not an Argon2id PHC string; verification fails")
            return VerifyResult(ok=False)
        decoded = argon2_memory.decode(stored_hash)
        if decoded is not None and decoded.parameters == self.parameters:
            # The usual case, on the thread's kept memory. Other parameters (a hash from before a change, to be
            # rehashed) go through argon2-cffi: the kept memory stays the configured size.
            try:
                return VerifyResult(ok=argon2_memory.matches(decoded, secret))
            except argon2_memory.Argon2Failure as exc:
                logger.error("password verification failed in libargon2 ({}); verification fails", exc)
                return VerifyResult(ok=False)
        try:
            stored_parameters = argon2.extract_parameters(stored_hash)
            self._hasher.verify(stored_hash, secret)
        except VerifyMismatchError:
            return VerifyResult(ok=False)
        except (InvalidHashError, VerificationError, ValueError) as exc:
            logger.error("stored password hash unusable ({}); verification fails", type(exc).__name__)
            return VerifyResult(ok=False)
        return VerifyResult(ok=True, needs_rehash=stored_parameters != self.parameters)


HASHING_NICENESS = 10  # CFS weight 110 against 1024: the 4 lanes of 2 hashes still leave the loop most of a core


def _yield_to_the_event_loop() -> None:
    """Run this hashing thread at a lower CPU priority than the rest of the process (Linux: per thread).

    A hash is CPU-bound for tens of milliseconds; at the same priority, hashing threads that fill every core
    delay the event loop, and with it `/health` and every request that hashes nothing. Throughput is unchanged:
    the cores stay busy hashing whenever the loop has nothing to do.
    """
    with contextlib.suppress(OSError, AttributeError):
        thread = threading.get_native_id()  # it starts at its creator's niceness
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + HASHING_NICENESS))


class PasswordHasher:
    """Async Argon2id hashing and verification over a bounded pool of worker threads."""

    def __init__(
        self,
        params: Argon2Params | None = None,
        *,
        max_concurrency: int,
        queue_size: int,
        queue_timeout: float,
    ) -> None:
        if max_concurrency < 1 or queue_size < 0 or not queue_timeout > 0:
            raise ValueError("max_concurrency >= 1, queue_size >= 0 and queue_timeout > 0 are required")
        self.params = params or Argon2Params()
        self._argon2 = _Argon2(self.params)
        self._slots = max_concurrency
        self._queue_size = queue_size
        self._queue_timeout = queue_timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_concurrency, thread_name_prefix="argon2", initializer=_yield_to_the_event_loop
        )
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._dummy_hash: str | None = None
        self._dummy_lock = asyncio.Lock()
        self._closed = False
        self._span_attributes = {
            "pandora.argon2.memory_kib": self.params.memory_kib,
            "pandora.argon2.time_cost": self.params.time_cost,
            "pandora.argon2.parallelism": self.params.parallelism,
        }

    @classmethod
    def from_settings(cls, settings: HashingSettings) -> PasswordHasher:
        params = Argon2Params(
            memory_kib=settings.argon2_memory_kib,
            time_cost=settings.argon2_time_cost,
            parallelism=settings.argon2_parallelism,
            hash_length=settings.argon2_hash_length,
            salt_length=settings.argon2_salt_length,
        )
        return cls(
            params,
            max_concurrency=settings.argon2_max_concurrency,
            queue_size=settings.argon2_queue_size,
            queue_timeout=settings.argon2_queue_timeout,
        )

    @property
    def in_flight(self) -> int:
        """Calls holding a worker slot (running, or handed a slot and about to run)."""
        return self._in_flight

    @property
    def queue_depth(self) -> int:
        """Calls waiting for a slot."""
        return len(self._waiters)

    async def hash(self, password: str) -> str:
        """The PHC string of the NFKC-normalised password, with the configured parameters and a new salt."""
        with (
            tracing.span("password.hash", attributes=self._span_attributes),
            m.password_hash_duration.labels("hash").time(),
        ):
            return await self._run(self._argon2.hash, _secret_bytes(password))

    async def verify(self, stored_hash: str, password: str) -> VerifyResult:
        """Verify with the stored hash's own parameters; a malformed or foreign hash gives ok=False."""
        with (
            tracing.span("password.verify", attributes=self._span_attributes),
            m.password_hash_duration.labels("verify").time(),
        ):
            return await self._run(self._argon2.verify, stored_hash, _secret_bytes(password))

    def check_needs_rehash(self, stored_hash: str) -> bool:
        """True when the stored hash's parameters (or format) differ from the configured ones."""
        try:
            return argon2.extract_parameters(stored_hash) != self._argon2.parameters
        except (InvalidHashError, ValueError):
            return True

    async def start(self) -> None:
        """Make the dummy hash now (at startup), so the first unknown-account login costs one verification."""
        await self._ensure_dummy_hash()

    async def verify_dummy(self, password: str) -> None:
        """One verification against the dummy hash, for unknown, deleted or erased accounts (SPEC §7.3)."""
        dummy = await self._ensure_dummy_hash()
        await self.verify(dummy, password)

    def close(self) -> None:
        """Refuse new work, fail the waiting callers with `ServiceBusy` and let running hashes finish."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_busy())
        self._executor.shutdown(wait=False)

    async def _ensure_dummy_hash(self) -> str:
        async with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash(secrets.token_urlsafe(32))
            return self._dummy_hash

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        queued = time.perf_counter()
        await self._acquire()
        wait_ms = round((time.perf_counter() - queued) * 1000, 3)
        trace.get_current_span().set_attribute("pandora.queue_wait_ms", wait_ms)
        loop = asyncio.get_running_loop()
        try:
            work = self._executor.submit(fn, *args)
        except RuntimeError:  # executor shut down by close()
            self._release()
            raise _busy() from None
        try:
            return await asyncio.wrap_future(work)
        finally:
            if work.done():
                self._release()
            else:
                # Our caller was cancelled while a thread still runs the hash: keep the slot until it ends,
                # so no more than `max_concurrency` hashes ever run.
                work.add_done_callback(lambda _: self._release_threadsafe(loop))

    def refuse_if_full(self) -> None:
        """Shed a request that would be refused a slot anyway, before it does any other work (a login's
        account lookup and lockout reservation cost database round trips a busy service cannot spare)."""
        if self._closed:
            raise _busy()
        if self._in_flight >= self._slots:
            self._refuse_if_queue_full()

    def _refuse_if_queue_full(self) -> None:
        if len(self._waiters) >= self._queue_size:
            m.argon2_rejections.labels("queue_full").inc()
            raise _busy()

    async def _acquire(self) -> None:
        if self._closed:
            raise _busy()
        if self._in_flight < self._slots and not self._waiters:
            self._in_flight += 1
            self._gauge()
            return
        self._refuse_if_queue_full()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._gauge()
        try:
            async with asyncio.timeout(self._queue_timeout):
                await waiter
        except (TimeoutError, asyncio.CancelledError) as exc:
            self._abandon(waiter)
            if isinstance(exc, TimeoutError):
                m.argon2_rejections.labels("timeout").inc()
                raise _busy() from None
            raise

    def _abandon(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self._release()  # a slot was handed over just as we gave up: pass it on
            return
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _gauge(self) -> None:
        m.argon2_in_flight.set(self._in_flight)
        m.argon2_queue_depth.set(len(self._waiters))

    def _release(self) -> None:
        # A freed slot goes straight to the oldest live waiter (FIFO); only when none waits is it returned.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._gauge()
                return
        self._in_flight -= 1
        self._gauge()

    def _release_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing waits any more
            loop.call_soon_threadsafe(self._release)

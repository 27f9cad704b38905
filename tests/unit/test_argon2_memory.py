"""Argon2id on kept memory: bit for bit what argon2-cffi computes and writes, and nothing left in the memory."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import argon2
import pytest
from argon2.low_level import ffi, hash_secret, hash_secret_raw
from hypothesis import given, settings
from hypothesis import strategies as st

from pandora_users.security import argon2_memory
from pandora_users.security.argon2_memory import Argon2Failure, decode, encode, matches, raw_hash

SMALL = argon2.Parameters(
    type=argon2.Type.ID, version=19, salt_len=16, hash_len=32, time_cost=1, memory_cost=64, parallelism=2
)


@st.composite
def inputs(draw: st.DrawFn) -> tuple[bytes, bytes, argon2.Parameters]:
    parallelism = draw(st.integers(1, 4))
    parameters = argon2.Parameters(
        type=argon2.Type.ID,
        version=19,
        salt_len=draw(st.integers(8, 40)),
        hash_len=draw(st.integers(16, 64)),
        time_cost=draw(st.integers(1, 3)),
        memory_cost=draw(st.integers(8 * parallelism, 256)),
        parallelism=parallelism,
    )
    return (
        draw(st.binary(max_size=160)),
        draw(st.binary(min_size=parameters.salt_len, max_size=parameters.salt_len)),
        parameters,
    )


@settings(max_examples=60, deadline=None)
@given(inputs())
def test_digest_and_phc_string_are_argon2_cffis(case: tuple[bytes, bytes, argon2.Parameters]) -> None:
    secret, salt, p = case
    digest = raw_hash(secret, salt, p)
    assert digest == hash_secret_raw(
        secret, salt, p.time_cost, p.memory_cost, p.parallelism, p.hash_len, argon2.Type.ID
    )
    stored = encode(p, salt, digest)
    assert (
        stored
        == hash_secret(secret, salt, p.time_cost, p.memory_cost, p.parallelism, p.hash_len, argon2.Type.ID).decode()
    )
    assert argon2.PasswordHasher.from_parameters(p).verify(stored, secret)
    decoded = decode(stored)
    assert decoded == argon2_memory.Decoded(p, salt, digest)
    assert matches(decoded, secret) and not matches(decoded, secret + b"!")


@pytest.mark.parametrize(
    "stored",
    [
        "$argon2i$v=19$m=64,t=1,p=2$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",  # argon2i
        "$argon2id$v=16$m=64,t=1,p=2$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",  # old version
        "$argon2id$m=64,t=1,p=2$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",  # no version
        "$argon2id$v=19$m=64,t=1,p=2$c29tZXNhbHRzb21lc2FsdA==$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",  # padded
        "$argon2id$v=19$m=64,t=1,p=2$c29tZXNhbHRzb21lc2FsdB$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",  # stray bits
        "$argon2id$v=19$m=64,t=1,p=2$c29tZXNh-HRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",  # urlsafe
        "$argon2id$v=19$p=2,m=64,t=1$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",  # order
        "$argon2id$v=19$m=064,t=1,p=2$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",  # zero
        "$argon2id$v=19$m=64,t=1,p=2$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g$x",
        "$argon2id$v=19$m=64,t=1,p=2$c29tZXNhbHRzb21lc2FsdA",
        "argon2id$v=19$m=64,t=1,p=2$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
        "",
    ],
)
def test_anything_but_the_exact_format_is_left_to_argon2_cffi(stored: str) -> None:
    assert decode(stored) is None


def _kept() -> tuple[int, bytes]:
    buffers = argon2_memory._buffers
    return int(ffi.cast("uintptr_t", buffers.memory)), bytes(ffi.buffer(buffers.memory, buffers.size))


def test_the_memory_is_kept_and_wiped_after_every_hash() -> None:
    raw_hash(b"first secret", b"0123456789abcdef", SMALL)
    address, content = _kept()
    assert len(content) >= SMALL.memory_cost * 1024 and content == bytes(len(content))  # nothing of the hash
    raw_hash(b"second secret", b"fedcba9876543210", SMALL)
    assert _kept() == (address, content)  # the same memory, wiped again


def test_a_bigger_hash_gets_a_bigger_buffer_and_each_thread_its_own() -> None:
    raw_hash(b"secret", b"0123456789abcdef", SMALL)
    bigger = dataclasses.replace(SMALL, memory_cost=1024)  # more than any other test here
    raw_hash(b"secret", b"0123456789abcdef", bigger)
    address, content = _kept()
    assert len(content) == bigger.memory_cost * 1024
    seen: list[int] = []
    thread = threading.Thread(target=lambda: (raw_hash(b"s", b"0123456789abcdef", SMALL), seen.append(_kept()[0])))
    thread.start()
    thread.join()
    assert seen and seen[0] != address


def test_no_memory_for_the_buffer_is_an_error_not_a_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoMemory(threading.local):
        size = 0

        @property
        def memory(self) -> Any:
            return ffi.NULL

        @memory.setter
        def memory(self, value: Any) -> None:
            if value is not None:
                raise MemoryError

    monkeypatch.setattr(argon2_memory, "_buffers", NoMemory())
    with pytest.raises(Argon2Failure, match="allocation"):
        raw_hash(b"secret", b"0123456789abcdef", SMALL)

"""Argon2id on memory each hashing thread keeps, instead of memory the kernel hands out fresh for every hash.

argon2-cffi lets libargon2 `malloc` its memory (64 MiB by default) per hash. An allocation that large is an
`mmap` of fresh pages, so every hash first page-faults through all of them and the kernel zeroes each one: with
`time_cost=1`, a large share of the hash's CPU (`just bench --only argon2` prints argon2-cffi's verify beside this one).
libargon2 takes allocation callbacks in its `argon2_context`; here they hand each thread the same buffer every
time. The buffer is wiped by libargon2 itself before it is given back (`clear_internal_memory`, on by default
in the library), exactly as it wipes `malloc`ed memory before `free`, so nothing of one hash survives into the
next; `tests/unit/test_argon2_memory.py` checks that. The cost is resident memory: one buffer of the configured
size per hashing thread, for the thread's life (the pool's threads live as long as the process).

The results are those of argon2-cffi to the bit: the same library computes them, and the PHC strings are
encoded as argon2-cffi encodes them (Hypothesis tests compare both ways). Anything this module does not
recognise as its own format goes to argon2-cffi instead (see `hashing._Argon2`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import threading
from dataclasses import dataclass
from typing import Any

import argon2
from _argon2_cffi_bindings import ffi, lib  # argon2-cffi-bindings: the libargon2 under argon2-cffi

VERSION = 0x13
_PREFIX = "$argon2id$v=19$"


class _Buffers(threading.local):
    memory: Any = None
    size: int = 0


_buffers = _Buffers()


def _allocate(memory: Any, size: int) -> int:
    memory[0] = ffi.NULL
    if _buffers.size < size:
        _buffers.memory, _buffers.size = None, 0  # the old one goes before the new one is made
        _buffers.memory = ffi.new("uint8_t[]", size)
        _buffers.size = size
    memory[0] = _buffers.memory
    return int(lib.ARGON2_OK)


def _keep(_memory: Any, _size: int) -> None:
    """libargon2 has wiped the memory already; the thread keeps it for its next hash."""


def _allocation_failed(*_exc_info: object) -> None:
    """No memory for the buffer: libargon2 gets its allocation error (`error=` below) and the caller an
    `Argon2Failure` saying so."""


# A failure inside the callback becomes libargon2's allocation error, never ARGON2_OK.
_ALLOCATE = ffi.callback(
    "int(uint8_t **, size_t)", _allocate, error=lib.ARGON2_MEMORY_ALLOCATION_ERROR, onerror=_allocation_failed
)
_FREE = ffi.callback("void(uint8_t *, size_t)", _keep)


class Argon2Failure(Exception):
    """libargon2 refused the computation (its error message is the text)."""


def raw_hash(secret: bytes, salt: bytes, parameters: argon2.Parameters) -> bytes:
    """The Argon2id digest of `secret` with `salt` and `parameters`, on this thread's kept memory."""
    out = ffi.new("uint8_t[]", parameters.hash_len)
    pwd = ffi.new("uint8_t[]", secret)
    salt_buffer = ffi.new("uint8_t[]", salt)
    context = ffi.new(
        "argon2_context *",
        {
            "out": out,
            "outlen": parameters.hash_len,
            "pwd": pwd,
            "pwdlen": len(secret),
            "salt": salt_buffer,
            "saltlen": len(salt),
            "secret": ffi.NULL,
            "secretlen": 0,
            "ad": ffi.NULL,
            "adlen": 0,
            "t_cost": parameters.time_cost,
            "m_cost": parameters.memory_cost,
            "lanes": parameters.parallelism,
            "threads": parameters.parallelism,
            "version": parameters.version,
            "allocate_cbk": _ALLOCATE,
            "free_cbk": _FREE,
            "flags": lib.ARGON2_DEFAULT_FLAGS,
        },
    )
    code = lib.argon2_ctx(context, lib.Argon2_id)
    if code != lib.ARGON2_OK:
        raise Argon2Failure(ffi.string(lib.argon2_error_message(code)).decode("ascii"))
    return bytes(ffi.buffer(out, parameters.hash_len))


def matches(decoded: Decoded, secret: bytes) -> bool:
    """Whether `secret` hashes to the decoded digest (compared in constant time). Raises Argon2Failure."""
    return hmac.compare_digest(raw_hash(secret, decoded.salt, decoded.parameters), decoded.digest)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes | None:
    """Strict unpadded standard base64: None unless `text` is the canonical encoding of its bytes."""
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if _b64(data) == text else None


def encode(parameters: argon2.Parameters, salt: bytes, digest: bytes) -> str:
    """The PHC string argon2-cffi writes for these parameters, salt and digest."""
    return (
        f"{_PREFIX}m={parameters.memory_cost},t={parameters.time_cost},p={parameters.parallelism}"
        f"${_b64(salt)}${_b64(digest)}"
    )


@dataclass(frozen=True, slots=True)
class Decoded:
    parameters: argon2.Parameters
    salt: bytes
    digest: bytes


def decode(stored: str) -> Decoded | None:
    """Salt and digest of an Argon2id v19 PHC string exactly as `encode` writes it; None for anything else."""
    try:
        parameters = argon2.extract_parameters(stored)
    except (argon2.exceptions.InvalidHashError, ValueError):
        return None
    parts = stored.split("$")
    if parameters.type is not argon2.Type.ID or parameters.version != VERSION or len(parts) != 6:
        return None
    salt, digest = _unb64(parts[4]), _unb64(parts[5])
    if salt is None or digest is None or encode(parameters, salt, digest) != stored:
        return None
    return Decoded(parameters, salt, digest)

"""Idempotency keys (SPEC §2.12): replay the first 2xx response of a (scope, key), refuse a reused key.

One Redis key per (scope, key) holds, sealed with AES-256-GCM (scope and key as associated data), either
an in-progress marker (the body's SHA-256, set with SET NX and a short lease) or the completed record (the
body's SHA-256 and the stored response, kept for `ttl`). Stored responses may hold tokens: nothing about a
request or its response is in Redis in clear, and the Redis key name is a hash.

Call `complete` or `abandon` only after `begin` answered `Begin.new`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass
from typing import ClassVar

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.asyncio import Redis

from api.ratelimit import UNAVAILABLE, WarnEvery
from pandora_users.domain.errors import DomainError
from pandora_users.store.crypto import DecryptionError, open_sealed, seal

HKDF_INFO = b"pandora-users idempotency v1"
MAX_KEY_LENGTH = 255
KEPT_HEADERS = {"etag": "ETag", "x-consistency-token": "X-Consistency-Token"}
LEASE = 60.0

# Replace the value only if it is still exactly what we read (our marker); delete it likewise.
SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class InvalidIdempotencyKey(DomainError):
    code = "invalid_idempotency_key"


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"


class RequestInProgress(DomainError):
    """The first request with this key is still running; `extra` carries `retry_after_seconds`."""

    code = "request_in_progress"

    def __post_init__(self) -> None:
        self.extra.setdefault("retry_after_seconds", 1)
        super().__post_init__()


def validate_key(raw: str | None) -> str | None:
    """The `Idempotency-Key` header: absent, or 1..255 printable ASCII characters."""
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_KEY_LENGTH or any(not " " <= ch <= "~" for ch in raw):
        raise InvalidIdempotencyKey("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return raw


def derive_store_key(data_encryption_key: bytes) -> bytes:
    """The AES-256 key of stored responses, derived from DATA_ENCRYPTION_KEY (HKDF-SHA256)."""
    if len(data_encryption_key) != 32:
        raise ValueError("DATA_ENCRYPTION_KEY must be 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(data_encryption_key)


class StoredResponse(msgspec.Struct, frozen=True):
    """What a replay sends back: status, body bytes, and the `ETag` / `X-Consistency-Token` headers."""

    status: int
    body: bytes
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class _Record(msgspec.Struct, frozen=True):
    body_hash: bytes
    response: StoredResponse | None = None


class Outcome(enum.Enum):
    NEW = "new"
    REPLAY = "replay"
    UNPROTECTED = "unprotected"


@dataclass(frozen=True)
class Begin:
    """`Begin.new` (go ahead), `Begin.replay(response)` or `Begin.unprotected` (Redis unavailable)."""

    outcome: Outcome
    response: StoredResponse | None = None

    new: ClassVar[Begin]
    unprotected: ClassVar[Begin]

    @classmethod
    def replay(cls, response: StoredResponse) -> Begin:
        return cls(Outcome.REPLAY, response)


Begin.new = Begin(Outcome.NEW)
Begin.unprotected = Begin(Outcome.UNPROTECTED)


class IdempotencyStore:
    """The Redis side of §2.12. Never raises because Redis is unavailable: it answers `Begin.unprotected`."""

    def __init__(self, redis: Redis, prefix: str, encryption_key: bytes, ttl: float, *, lease: float = LEASE) -> None:
        """`encryption_key` is DATA_ENCRYPTION_KEY; the store derives its own key from it."""
        self._redis = redis
        self._prefix = prefix
        self._key = derive_store_key(encryption_key)
        self._ttl_ms = max(1, round(ttl * 1000))
        self._lease_ms = max(1, round(lease * 1000))
        self._swap = redis.register_script(SWAP)
        self._warn = WarnEvery()
        self.unprotected = 0

    def redis_key(self, scope: str, key: str) -> str:
        return f"{self._prefix}idempotency:{hashlib.sha256(_aad(scope, key)).hexdigest()}"

    async def begin(self, scope: str, key: str, body: bytes) -> Begin:
        """Claim the key, or find the first request's outcome (replay, reused, in progress)."""
        digest = hashlib.sha256(body).digest()
        name, aad = self.redis_key(scope, key), _aad(scope, key)
        marker = self._seal(_Record(digest), aad)
        try:
            for _ in range(3):  # the key can vanish between SET NX and GET (lease expiry, abandon)
                if await self._redis.set(name, marker, nx=True, px=self._lease_ms):
                    return Begin.new
                stored = _raw(await self._redis.get(name))
                if stored is not None:
                    return self._existing(stored, aad, digest)
        except UNAVAILABLE as exc:
            return self._unprotect(exc)
        raise RequestInProgress()

    async def complete(self, scope: str, key: str, response: StoredResponse) -> None:
        """Store a 2xx response for replay (for `ttl`); any other status frees the key."""
        if not 200 <= response.status < 300:
            await self.abandon(scope, key)
            return
        kept = {KEPT_HEADERS[k.lower()]: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS}
        name, aad = self.redis_key(scope, key), _aad(scope, key)
        try:
            found = await self._marker(name, aad)
            if found is not None:
                stored, record = found
                done = self._seal(_Record(record.body_hash, StoredResponse(response.status, response.body, kept)), aad)
                await self._swap(keys=[name], args=[stored, done, self._ttl_ms])
        except UNAVAILABLE as exc:
            self._unprotect(exc)

    async def abandon(self, scope: str, key: str) -> None:
        """Free the key after a 4xx/5xx, so that the client can retry with it."""
        name, aad = self.redis_key(scope, key), _aad(scope, key)
        try:
            found = await self._marker(name, aad)
            if found is not None:
                await self._swap(keys=[name], args=[found[0], "", 0])
        except UNAVAILABLE as exc:
            self._unprotect(exc)

    async def _marker(self, name: str, aad: bytes) -> tuple[bytes, _Record] | None:
        """The in-progress marker under `name` (raw and opened), or None (gone, completed, unreadable)."""
        stored = _raw(await self._redis.get(name))
        if stored is None:
            return None
        record = self._open(stored, aad)
        return (stored, record) if record is not None and record.response is None else None

    def _existing(self, stored: bytes, aad: bytes, digest: bytes) -> Begin:
        record = self._open(stored, aad)
        if record is None:
            return self._unprotect(DecryptionError("stored value does not authenticate"))
        if not hmac.compare_digest(record.body_hash, digest):
            raise IdempotencyKeyReused()
        if record.response is None:
            raise RequestInProgress()
        return Begin.replay(record.response)

    def _seal(self, record: _Record, aad: bytes) -> bytes:
        return seal(self._key, msgspec.msgpack.encode(record), aad)

    def _open(self, stored: bytes, aad: bytes) -> _Record | None:
        try:
            return msgspec.msgpack.decode(open_sealed(self._key, stored, aad), type=_Record)
        except (DecryptionError, msgspec.DecodeError):
            return None

    def _unprotect(self, exc: BaseException) -> Begin:
        self.unprotected += 1
        self._warn(
            "idempotency: Redis unavailable or value unreadable ({}); requests run unprotected", type(exc).__name__
        )
        return Begin.unprotected


def _raw(value: bytes | str | None) -> bytes | None:
    if isinstance(value, str):
        raise TypeError("the idempotency store needs a Redis client with decode_responses=False")
    return value


def _aad(scope: str, key: str) -> bytes:
    return f"{scope}\n{key}".encode()

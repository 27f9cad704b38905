"""Access tokens (SPEC §6.1) and opaque refresh/link tokens (§6.4, §3.1.5).

JWS signing and signature checks are joserfc's; this module adds the strict profile of §6.1 around them: size
and segment checks, a header of exactly `alg`/`typ`/`kid`, a one-entry algorithm allowlist, a kid map lookup,
claims parsed by a JSON decoder that rejects duplicate keys, and strict time checks.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from joserfc import jws
from joserfc._rfc7515.model import JWSAlgModel
from joserfc.errors import BadSignatureError, JoseError, UnsupportedAlgorithmError
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode

from pandora_users.security.keys import KeyRing, KeySet, SigningKey

TokenInvalidReason = Literal[
    "malformed",
    "bad_signature",
    "unknown_key",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_type",
    "wrong_audience",
]

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a JWT "typ", not a secret)
MAX_TOKEN_BYTES = 8 * 1024
MAX_HEADER_BYTES = 512
MAX_HEADER_SEGMENT = -(-MAX_HEADER_BYTES * 4 // 3)  # base64url length of 512 bytes, without padding
CLOCK_SKEW_SECONDS = 30
HEADER_MEMBERS = frozenset({"alg", "typ", "kid"})
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class TokenInvalid(Exception):
    """The access token is refused; `reason` is IntrospectToken's `inactive_reason`."""

    def __init__(self, reason: TokenInvalidReason) -> None:
        super().__init__(reason)
        self.reason: TokenInvalidReason = reason


class AccessClaims(msgspec.Struct, frozen=True, kw_only=True):
    """The claims of a verified access token (JWT times are integer seconds since the epoch)."""

    iss: str
    sub: str
    aud: str
    user_id: str
    email: str
    role: str
    token_type: str
    sid: str
    jti: str
    iat: int
    nbf: int
    exp: int
    auth_time: int
    amr: tuple[str, ...]


class IssuedAccessToken(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    jti: str
    issued_at: int
    expires_at: int


class _OneAlgorithm(JWSRegistry):
    """joserfc registry allowing exactly one algorithm.

    It bypasses joserfc's per-call RFC 9864 deprecation warning for "EdDSA", the name SPEC §6.1 requires.
    """

    def __init__(self, algorithm: str) -> None:
        super().__init__(algorithms=[algorithm])
        self._algorithm = algorithm

    def get_alg(self, name: str) -> JWSAlgModel:
        if name != self._algorithm:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]


_REGISTRIES: dict[str, JWSRegistry] = {alg: _OneAlgorithm(alg) for alg in ("EdDSA", "HS256")}


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_strict_object, parse_constant=_no_constant)


def _strict_json_object(data: bytes) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes, refusing duplicate keys, NaN/Infinity and trailing data."""
    value = _STRICT_JSON.decode(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _parse_header(token: object) -> dict[str, str]:
    """Steps 1-2 of §6.1: shape, sizes, and a header of exactly alg/typ/kid (strings)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or not _COMPACT.fullmatch(token):
        raise TokenInvalid("malformed")
    segment = token[: token.index(".")]
    if len(segment) > MAX_HEADER_SEGMENT:
        raise TokenInvalid("malformed")
    try:
        raw = urlsafe_b64decode(segment.encode("ascii"))
        if len(raw) > MAX_HEADER_BYTES:
            raise ValueError("header too large")
        header = _strict_json_object(raw)
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise TokenInvalid("malformed") from None
    if header.keys() != HEADER_MEMBERS or not all(isinstance(v, str) for v in header.values()):
        raise TokenInvalid("malformed")
    return header


VERIFIED_CACHE_SIZE = 20_000  # verified access tokens remembered per process (~1 KiB each)


class TokenService:
    """Issues and verifies access tokens with the KeyRing's current keys."""

    def __init__(
        self,
        keyring: KeyRing | KeySet,
        issuer: str,
        access_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyring = keyring if isinstance(keyring, KeyRing) else KeyRing(keyring)
        self.issuer = issuer
        self.access_ttl = access_ttl
        self._clock = clock
        # Tokens that passed every check, with the key set that verified them (see `verify_access`).
        self._verified: dict[str, tuple[KeySet, AccessClaims]] = {}

    @property
    def keyring(self) -> KeyRing:
        return self._keyring

    def issue_access(
        self,
        *,
        user_id: str,
        email: str,
        role: str,
        audience: str,
        session_id: str,
        session_expires_at: float,
        auth_time: float,
    ) -> IssuedAccessToken:
        """Sign a §6.1 access token with the active key; it never outlives its session."""
        keyset = self._keyring.current
        key = keyset.active
        iat = int(self._clock())
        exp = min(int(iat + self.access_ttl), int(session_expires_at))
        jti = str(uuid.uuid4())
        claims = {
            "iss": self.issuer,
            "sub": user_id,
            "aud": audience,
            "user_id": user_id,
            "email": email,
            "role": role,
            "token_type": "access",
            "sid": session_id,
            "jti": jti,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "auth_time": int(auth_time),
            "amr": ["pwd"],
        }
        header = {"alg": keyset.algorithm, "typ": ACCESS_TOKEN_TYPE, "kid": key.kid}
        registry = _REGISTRIES[keyset.algorithm]
        token = jws.serialize_compact(header, msgspec.json.encode(claims), key.private_key, registry=registry)
        return IssuedAccessToken(token=token, jti=jti, issued_at=iat, expires_at=exp)

    def verify_access(self, token: str, *, audience: str | None) -> AccessClaims:
        """Every verification step of §6.1 (the §6.6 session check is the caller's); raises TokenInvalid.

        A token that passed is remembered, with the key set that verified it, until it expires: the same string
        again skips the signature check (the costly step), and only expiry and audience are checked anew. A key
        rotation (a new key set) makes every remembered token go through the full check again, so a retired key
        stops verifying at once.
        """
        keyset = self._keyring.current  # one snapshot: a concurrent rotation cannot mix two key sets
        known = self._verified.get(token)
        if known is not None and known[0] is keyset:
            return self._check_time_and_audience(token, known[1], audience)
        header = _parse_header(token)
        if header["alg"] != keyset.algorithm:
            raise TokenInvalid("bad_signature")  # `none` and every other algorithm: a one-entry allowlist
        key = keyset.keys.get(header["kid"])
        if key is None:
            raise TokenInvalid("unknown_key")
        payload = self._verified_payload(token, key, keyset.algorithm)
        claims = self._check_time_and_audience(token, self._claims(header, payload), audience)
        self._remember(token, keyset, claims)
        return claims

    def _check_time_and_audience(self, token: str, claims: AccessClaims, audience: str | None) -> AccessClaims:
        """The checks that can change between two uses of one token: every use runs them, remembered or not."""
        now = self._clock()
        if now >= claims.exp:
            self._verified.pop(token, None)
            raise TokenInvalid("expired")
        if claims.nbf > now + CLOCK_SKEW_SECONDS or claims.iat > now + CLOCK_SKEW_SECONDS:
            raise TokenInvalid("not_yet_valid")
        if audience is not None and claims.aud != audience:
            raise TokenInvalid("wrong_audience")
        return claims

    def _remember(self, token: str, keyset: KeySet, claims: AccessClaims) -> None:
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            now = self._clock()
            for stale in [t for t, (_, c) in self._verified.items() if c.exp <= now]:
                del self._verified[stale]
            if len(self._verified) >= VERIFIED_CACHE_SIZE:  # mostly live: forget the oldest tenth
                for oldest in list(itertools.islice(self._verified, VERIFIED_CACHE_SIZE // 10)):
                    del self._verified[oldest]
        self._verified[token] = (keyset, claims)

    @staticmethod
    def _verified_payload(token: str, key: SigningKey, algorithm: str) -> dict[str, Any]:
        try:
            obj = jws.deserialize_compact(token, key.private_key, registry=_REGISTRIES[algorithm])
        except BadSignatureError:
            raise TokenInvalid("bad_signature") from None
        except (JoseError, ValueError):
            raise TokenInvalid("malformed") from None
        try:
            return _strict_json_object(obj.payload)
        except ValueError:
            raise TokenInvalid("malformed") from None

    def _claims(self, header: dict[str, str], payload: dict[str, Any]) -> AccessClaims:
        """Issuer, type and claim shapes: fixed by the signed bytes, checked once per token."""
        if payload.get("iss") != self.issuer:
            raise TokenInvalid("wrong_issuer")
        if header["typ"] != ACCESS_TOKEN_TYPE or payload.get("token_type") != "access":
            raise TokenInvalid("wrong_type")
        try:
            return msgspec.convert(payload, AccessClaims, strict=True)
        except msgspec.ValidationError:
            raise TokenInvalid("malformed") from None


def new_opaque_token() -> tuple[str, bytes]:
    """A refresh or link token: 32 CSPRNG bytes as base64url without padding (43 chars), and its SHA-256."""
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return token, hash_opaque_token(token)


def hash_opaque_token(token: str) -> bytes:
    """The SHA-256 digest stored in place of an opaque token (any presented string hashes without error)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

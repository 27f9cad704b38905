"""Caller authentication of SPEC §5.2: `authorization: Bearer <service token>`, compared in constant time.

Tokens are compared as SHA-256 digests with `hmac.compare_digest`, against every entry without stopping at
a match, so neither the position of the matching entry nor a token's length shows in the timing. An entry
may restrict its caller to a list of RPCs (PERMISSION_DENIED outside it). With no tokens configured (allowed
only in dev and test) every call is accepted as `service:anonymous`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from pandora_users.config.env_edge import ServiceToken
from pandora_users.domain.errors import Forbidden, Unauthorized

ANONYMOUS = "anonymous"
INVALID_TOKEN = "missing or invalid service token"  # noqa: S105 - an error message


@dataclass(frozen=True)
class Caller:
    """The authenticated calling service."""

    name: str
    allowed: frozenset[str] | None = None  # None: every RPC

    def authorize(self, rpc: str) -> None:
        """Forbidden (PERMISSION_DENIED) when the caller's token does not allow `rpc`."""
        if self.allowed is not None and rpc not in self.allowed:
            raise Forbidden(f"{rpc} is not allowed for this service token")

    @property
    def actor(self) -> str:
        return f"service:{self.name}"


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    caller: Caller


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def bearer(header: str | None) -> str | None:
    """The token of `Bearer <token>` (scheme in any case), or None when the header is absent or malformed."""
    if header is None:
        return None
    scheme, sep, token = header.partition(" ")
    if not sep or scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class ServiceAuth:
    def __init__(self, tokens: Sequence[ServiceToken]) -> None:
        self.replace(tokens)

    def replace(self, tokens: Sequence[ServiceToken]) -> None:
        """Take a new set of service tokens (a Vault refresh); calls in flight keep the caller they had."""
        self._entries = tuple(_Entry(_digest(t.token.get()), Caller(t.name, t.allowed_rpcs)) for t in tokens)

    @property
    def anonymous(self) -> bool:
        return not self._entries

    def authenticate(self, header: str | None) -> Caller:
        """The caller presenting `header`; Unauthorized (UNAUTHENTICATED) for a missing or unknown token."""
        if self.anonymous:
            return Caller(ANONYMOUS)
        token = bearer(header)
        presented = _digest(token if token is not None else "")
        found: _Entry | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, presented) and token is not None:
                found = entry
        if found is None:
            raise Unauthorized(INVALID_TOKEN)
        return found.caller

"""Bearer authentication in the order of SPEC §2.5, with the session-liveness check of §6.6."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

from pandora_users.domain.errors import Forbidden, Unauthorized, UserNotFound
from pandora_users.observability import metrics as m
from pandora_users.security.tokens import AccessClaims, TokenInvalid, TokenService

PUBLIC, ADMIN = "pandora-api", "pandora-admin"
# For a session id and its actor: None (live), "revoked" or "deleted", and the actor's consistency mark (None
# when unknown).
SessionState = Callable[[UUID, str], Awaitable[tuple[str | None, int | None]]]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    user_id: UUID
    session_id: UUID
    email: str
    role: str
    audience: str
    claims: AccessClaims
    mark: int | None = None  # the actor's read-your-writes mark, read with the liveness check (None: unknown)

    @functools.cached_property
    def actor(self) -> str:
        return str(self.user_id)


def bearer_token(header: str | None) -> str:
    """Steps 1 and 2: present, and exactly `<scheme> <token>` with scheme Bearer (any case)."""
    if header is None:
        raise Unauthorized("missing authorization header")
    scheme, sep, token = header.partition(" ")
    if not sep or scheme.lower() != "bearer" or not token or " " in token or "\t" in token:
        raise Unauthorized("invalid authorization header format")
    return token


class Authenticator:
    def __init__(self, tokens: TokenService, session_state: SessionState, *, audience: str) -> None:
        self.tokens = tokens
        self.session_state = session_state
        self.audience = audience

    async def authenticate(self, header: str | None) -> Principal:
        token = bearer_token(header)
        try:
            claims = self.tokens.verify_access(token, audience=None)
        except TokenInvalid as exc:
            m.token_validation.labels("access", "invalid").inc()
            m.token_validation_errors.labels(exc.reason).inc()
            raise Unauthorized("invalid or expired access token") from None
        if claims.aud != self.audience:
            if self.audience == ADMIN:
                raise Forbidden("admin access required")
            raise Unauthorized("invalid or expired access token")
        if self.audience == ADMIN and claims.role != "admin":
            raise Forbidden("admin access required")
        state, mark = await self.session_state(UUID(claims.sid), claims.sub)
        m.soon_counter(m.token_validation, "access", "valid" if state is None else "revoked").add()
        if state == "deleted" and self.audience == PUBLIC:
            raise UserNotFound()
        if state is not None:
            raise Unauthorized("session has been revoked")
        return Principal(UUID(claims.sub), UUID(claims.sid), claims.email, claims.role, claims.aud, claims, mark)

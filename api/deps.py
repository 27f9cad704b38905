"""What the HTTP handlers share: the runtime's parts and the per-request helpers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from litestar import Request, Response
from redis.asyncio import Redis

from api.auth import Authenticator, Principal
from api.consistency import Consistency, encode_token
from api.request_state import state_of
from api.schemas import AuthResponse, UserDTO
from pandora_users.commands.base import WriteSide
from pandora_users.commands.registration import SessionGrant
from pandora_users.domain.context import Context
from pandora_users.domain.events import ERASED
from pandora_users.domain.user import User
from pandora_users.observability.tracing import trace_context
from pandora_users.security.tokens import TokenService
from pandora_users.store.app import EventStore
from pandora_users.timestamps import rfc3339
from projections.queries.user_rows import UserRows

Limiter = Callable[[Request[Any, Any, Any], Sequence[tuple[str, str]]], Awaitable[dict[str, str]]]


def ts_epoch(seconds: float) -> str:
    return rfc3339(datetime.fromtimestamp(seconds, UTC))


@dataclass
class Limits:
    """The rate-limit hook; without a limiter every request is allowed (tests of other parts)."""

    check: Limiter | None = None
    per_user: bool = True

    async def __call__(self, request: Request[Any, Any, Any], limits: Sequence[tuple[str, str]]) -> None:
        if self.check is not None:
            await self.check(request, limits)

    async def authenticated(self, request: Request[Any, Any, Any], actor: str) -> None:
        """`user` for authenticated requests, or `ip` when RATE_LIMIT_ENABLE_PER_USER=false."""
        await self(
            request, [("user", actor)] if self.per_user else [("ip", state_of(request)["client_ip"] or "unknown")]
        )


@dataclass
class ApiDeps:
    """Built once by the composition root and injected into every handler."""

    write: WriteSide
    store: EventStore
    tokens: TokenService
    authenticator: Authenticator
    consistency: Consistency
    pool: asyncpg.Pool
    redis: Redis
    users: UserRows
    limits: Limits = field(default_factory=Limits)
    forgot_min_seconds: float = 0.25


def note(request: Request[Any, Any, Any], **facts: Any) -> None:
    """Facts for this request's access-log entry (never secrets or bodies)."""
    state_of(request)["audit"] = {**state_of(request).get("audit", {}), **facts}


def context(request: Request[Any, Any, Any], *, actor_id: str | None, actor_role: str) -> Context:
    """The audit metadata of SPEC §9.2 for a command issued by this request."""
    metadata = {"actor_role": actor_role, "request_id": state_of(request)["request_id"]}
    if actor_id is not None:
        metadata["actor_id"] = actor_id
    ip, agent = state_of(request)["client_ip"], request.headers.get("user-agent")
    if ip:
        metadata["ip_address"] = ip
    if agent:
        metadata["user_agent"] = agent[:512]
    incoming = trace_context(request.headers.get("traceparent"))  # a valid one only: the log is immutable
    if incoming is not None:
        metadata["traceparent"], metadata["trace_id"] = incoming
    return Context(metadata=metadata)


def principal_context(request: Request[Any, Any, Any], principal: Principal) -> Context:
    role = "admin" if principal.audience == "pandora-admin" else "user"
    return context(request, actor_id=principal.actor, actor_role=role)


def row_dto(row: Any) -> UserDTO:
    """The UserDTO of a users read-model row: the public fields of `projections.queries.users.to_dto` alone,
    without formatting the admin ones (`GET /users/me` builds one per request)."""
    email = row["email"]
    return UserDTO(
        id=str(row["id"]),
        email=ERASED if email is None else email,
        first_name=row["first_name"],
        last_name=row["last_name"],
        role=row["role"],
        kyc_status=row["kyc_status"],
        email_verified=row["email_verified_at"] is not None,
        created_at=rfc3339(row["created_at"]),
        updated_at=rfc3339(row["updated_at"]),
    )


def user_dto(user: User) -> UserDTO:
    return UserDTO(
        id=str(user.id),
        email=user.email,
        first_name=user.first_name,
        last_name=user.last_name,
        role=user.role,
        kyc_status=user.kyc_status,
        email_verified=user.email_verified_at is not None,
        created_at=rfc3339(user.created_at),
        updated_at=rfc3339(user.updated_at),
    )


def auth_response(tokens: TokenService, grant: SessionGrant) -> AuthResponse:
    issued = tokens.issue_access(
        user_id=str(grant.user.id),
        email=grant.user.email,
        role=grant.user.role,
        audience=grant.audience,
        session_id=str(grant.session_id),
        session_expires_at=grant.session_expires_at.timestamp(),
        auth_time=grant.auth_time.timestamp(),
    )
    session_end = rfc3339(grant.session_expires_at)
    return AuthResponse(
        access_token=issued.token,
        refresh_token=grant.refresh_token,
        token_type="Bearer",  # noqa: S106 - the token type, not a secret
        expires_in=issued.expires_at - issued.issued_at,
        access_token_expires_at=ts_epoch(issued.expires_at),
        refresh_token_expires_at=session_end,
        expires_at=session_end,
        session_id=str(grant.session_id),
        user=user_dto(grant.user),
    )


def with_headers(response: Response[Any], *, position: int | None = None, etag: int | None = None) -> Response[Any]:
    if position is not None:
        response.headers["X-Consistency-Token"] = encode_token(position)
    if etag is not None:
        response.headers["ETag"] = f'"{etag}"'
    return response


async def committed(
    deps: ApiDeps,
    actor: str,
    body: Any,
    *,
    position: int | None,
    etag: int | None = None,
    status: int = 200,
) -> Response[Any]:
    """A command's response: the actor's reads will wait for this write (SPEC §2.10), and the headers say so."""
    await deps.consistency.remember(actor, position)
    return with_headers(Response(body, status_code=status), position=position, etag=etag)

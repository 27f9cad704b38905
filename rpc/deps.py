"""What the gRPC handlers share, built once by `start_rpc` from the runtime."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from api.consistency import Consistency
from api.idempotency import IdempotencyStore
from pandora_users.commands.base import WriteSide
from pandora_users.domain.errors import UserNotFound
from pandora_users.security.tokens import TokenService
from pandora_users.store.app import EventStore
from projections.queries.user_rows import UserRows
from rpc.auth import ServiceAuth
from rpc.calls import Call, text
from rpc.streaming import EventFeed

USERS = ("users",)

# None when the session is live, else "revoked" or "deleted" (SPEC §6.6).
SessionState = Callable[[UUID], Awaitable[str | None]]


@dataclass
class RpcDeps:
    write: WriteSide
    store: EventStore
    pool: asyncpg.Pool
    tokens: TokenService
    session_state: SessionState
    consistency: Consistency
    idempotency: IdempotencyStore | None
    auth: ServiceAuth
    feed: EventFeed
    users: UserRows

    async def read_wait(self, call: Call, projections: Sequence[str]) -> int:
        """Read your writes (SPEC §2.10): `x-consistency-token`, and the caller's own last write."""
        header = text(call.metadata, "x-consistency-token")
        return await self.consistency.wait(projections, header=header, actor=call.actor)

    async def user_row(self, call: Call, user_id: UUID) -> Any:
        """The users row of `user_id` (UserNotFound if unknown), reflecting the caller's writes as `read_wait`."""
        wanted = await self.consistency.wanted(header=text(call.metadata, "x-consistency-token"), actor=call.actor)
        row, _ = await self.users.row(user_id, wanted, functools.partial(self.consistency.wait_for, USERS))
        if row is None:
            raise UserNotFound()
        return row

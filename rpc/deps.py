"""What the gRPC handlers share, built once by `start_rpc` from the runtime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from api.consistency import Consistency
from api.idempotency import IdempotencyStore
from pandora_users.commands.base import WriteSide
from pandora_users.security.tokens import TokenService
from pandora_users.store.app import EventStore
from rpc.auth import ServiceAuth
from rpc.calls import Call, text
from rpc.streaming import EventFeed

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

    async def read_wait(self, call: Call, projections: Sequence[str]) -> int:
        """Read your writes (SPEC §2.10): `x-consistency-token`, and the caller's own last write."""
        header = text(call.metadata, "x-consistency-token")
        return await self.consistency.wait(projections, header=header, actor=call.actor)

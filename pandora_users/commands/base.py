"""What every command shares: its dependencies, the retry loop of SPEC §1.4 invariant 3, and its result."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

import asyncpg  # at run time: the framework resolves this dataclass's annotations (it is injected)
from eventsourcing.persistence import IntegrityError, OperationalError

from pandora_users.domain.errors import ServiceBusy, ServiceUnavailable
from pandora_users.observability import metrics as m
from pandora_users.observability import tracing
from pandora_users.security.hashing import PasswordHasher
from pandora_users.security.passwords import Blocklist
from pandora_users.store.app import CURRENT_COMMAND, EventStore
from pandora_users.store.lockout import Lockout
from pandora_users.store.recorder import CredentialConflict

P = ParamSpec("P")
T = TypeVar("T")
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class WriteConfig:
    """The settings commands decide with (a slice of Settings, so tests can build it directly)."""

    refresh_ttl: float = 168 * 3600.0
    session_max_per_user: int = 50
    session_idle_timeout: float = 0.0
    email_verification_token_ttl: float = 24 * 3600.0
    password_reset_token_ttl: float = 3600.0
    email_verification_url: str = "http://localhost:3000/verify-email?token={token}"
    password_reset_url: str = "http://localhost:3000/reset-password?token={token}"  # noqa: S105
    email_verification_required: bool = False
    password_min_length: int = 8
    password_max_length: int = 128
    lockout_threshold: int = 10
    lockout_duration: float = 900.0

    @classmethod
    def from_settings(cls, settings: Any) -> WriteConfig:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class EndedSession:
    """A session a command ended; the caller records it in the revocation list after the commit."""

    session_id: UUID
    user_id: UUID
    reason: str

    @property
    def reason_class(self) -> str:
        return "deleted" if self.reason in ("account_deleted", "account_erased") else "revoked"


@dataclass(frozen=True)
class Written:
    """What a command returns: the aggregate it addressed, its version, and the position written (if any)."""

    id: UUID
    version: int
    position: int | None
    ended_sessions: tuple[EndedSession, ...] = ()


OnSessionsEnded = Callable[[Sequence[EndedSession]], Awaitable[None]]


@dataclass
class WriteSide:
    """The dependencies of every command, built once by the composition root."""

    store: EventStore
    pepper: bytes
    hasher: PasswordHasher
    blocklist: Blocklist
    config: WriteConfig = field(default_factory=WriteConfig)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, "write"))
    on_sessions_ended: OnSessionsEnded | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # The asyncpg pool of the statements a command runs on the event loop (refresh: one statement that looks the
    # token up and rotates it, no events), instead of a thread of the write pool. The composition root sets it.
    pool: asyncpg.Pool | None = None

    @property
    def statements(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("WriteSide.pool is not set")
        return self.pool

    @functools.cached_property
    def lockout(self) -> Lockout:
        return Lockout(
            self.store.datastore,
            threshold=self.config.lockout_threshold,
            duration=self.config.lockout_duration,
        )

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking store work on the write pool, never on the event loop."""
        loop = asyncio.get_running_loop()
        # run_in_executor does not carry contextvars; the copy takes the current span into the thread.
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(self.executor, call)

    async def after_commit(self, written: Written) -> Written:
        if written.ended_sessions and self.on_sessions_ended is not None:
            await self.on_sessions_ended(written.ended_sessions)
        return written

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def with_retries(attempt: Callable[[], T]) -> T:
    """Re-run a load-decide-save attempt on fresh state when another command wrote first.

    At most 3 attempts; after that the command answers `service_busy`. A command with an If-Match
    precondition fails its re-run at the precondition (412), since the aggregate's version has moved.
    """
    command = attempt.__qualname__.split(".<locals>")[0]
    CURRENT_COMMAND.set(command)
    name = command_name(command)
    with tracing.span(f"command {name}", attributes={"pandora.command": name}) as span:
        for number in range(1, MAX_ATTEMPTS + 1):
            span.set_attribute("pandora.retries", number - 1)
            try:
                result = attempt()
            except (IntegrityError, CredentialConflict):
                m.append_conflicts.labels(command).inc()
                if number == MAX_ATTEMPTS:
                    raise ServiceBusy(extra={"retry_after_seconds": 1}) from None
            except OperationalError as exc:
                raise ServiceUnavailable() from exc
            else:
                written = _written(result)
                if written is not None:
                    span.set_attribute("pandora.aggregate_id", str(written.id))
                return result
    raise AssertionError("unreachable")


def command_name(function: str) -> str:
    """The span name of a command function: `change_kyc` → `ChangeKyc` (SPEC §12.3 `command <Name>`)."""
    return "".join(part.capitalize() for part in function.split("_"))


def _written(result: object) -> Written | None:
    if isinstance(result, tuple):
        return next((item for item in result if isinstance(item, Written)), None)
    return result if isinstance(result, Written) else None

"""`pandora.user.v1.UserService`: thin handlers over the commands and queries the HTTP APIs use.

Every call is authenticated by service token, reads its one request message (64 KiB cap), runs its handler
and answers. A domain error ends the call with the status of the shared error table and `x-error-code`;
an unreachable database is UNAVAILABLE; anything unexpected is INTERNAL, with details only in the log.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import h2.exceptions
from google.protobuf.message import Message
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Stream
from loguru import logger

from pandora_users.domain.errors import DomainError
from pandora_users.infra.read_pool import DATABASE_OUTAGES
from pandora_users.observability import metrics as m
from projections.queries.events import parse_types
from projections.queries.pagination import invalid
from rpc.calls import Call, current_call, parse_user_id, receive, text
from rpc.convert import event_from_dto, event_from_entry
from rpc.deps import RpcDeps
from rpc.errors import (
    INTERNAL,
    SEND_FAILURES,
    UNAVAILABLE,
    Failure,
    end_if_cancelled,
    ended_if_caller_left,
    send_failure,
)
from rpc.gen import user_pb2 as pb
from rpc.gen.user_grpc import UserServiceBase
from rpc.history import history
from rpc.introspect import introspect_rpc
from rpc.streaming import Selection
from rpc.users import get_user_by_email_rpc, get_user_rpc, list_users_rpc, update_kyc_rpc, validate_user_rpc

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Unary = Callable[[RpcDeps, Call, Req], Awaitable[Resp]]


class UserService(UserServiceBase):
    def __init__(self, deps: RpcDeps) -> None:
        self.d = deps

    async def GetUser(self, stream: Stream[pb.GetUserRequest, pb.GetUserResponse]) -> None:  # noqa: N802
        await self._unary(stream, get_user_rpc)

    async def GetUserByEmail(self, stream: Stream[pb.GetUserByEmailRequest, pb.GetUserResponse]) -> None:  # noqa: N802
        await self._unary(stream, get_user_by_email_rpc)

    async def UpdateKYCStatus(self, stream: Stream[pb.UpdateKYCRequest, pb.UpdateKYCResponse]) -> None:  # noqa: N802
        await self._unary(stream, update_kyc_rpc)

    async def ValidateUser(self, stream: Stream[pb.ValidateUserRequest, pb.ValidateUserResponse]) -> None:  # noqa: N802
        await self._unary(stream, validate_user_rpc)

    async def ListUsers(self, stream: Stream[pb.ListUsersRequest, pb.ListUsersResponse]) -> None:  # noqa: N802
        await self._unary(stream, list_users_rpc)

    async def IntrospectToken(self, stream: Stream[pb.IntrospectTokenRequest, pb.IntrospectTokenResponse]) -> None:  # noqa: N802
        await self._unary(stream, introspect_rpc)

    async def GetUserHistory(self, stream: Stream[pb.GetUserHistoryRequest, pb.Event]) -> None:  # noqa: N802
        await self._server_stream(stream, self._history)

    async def StreamEvents(self, stream: Stream[pb.StreamEventsRequest, pb.Event]) -> None:  # noqa: N802
        await self._server_stream(stream, self._events)

    async def _history(self, call: Call, request: pb.GetUserHistoryRequest) -> AsyncGenerator[pb.Event, None]:
        call.user_id = user_id = parse_user_id(request.user_id)
        await self.d.read_wait(call, ("users", "event_log"))
        async with contextlib.aclosing(history(self.d.pool, self.d.store, user_id, request)) as dtos:
            async for dto in dtos:
                yield event_from_dto(dto)

    async def _events(self, call: Call, request: pb.StreamEventsRequest) -> AsyncGenerator[pb.Event, None]:
        for name in ("from_position", "limit"):
            if getattr(request, name) < 0:
                raise invalid(name, "must not be negative")
        types = parse_types(list(request.event_types)) if request.event_types else None
        call.user_id = parse_user_id(request.user_id) if request.user_id else None
        selection = Selection.of(request.from_position, types, call.user_id)
        sent = 0
        async with contextlib.aclosing(self.d.feed.events(selection, follow=request.follow)) as entries:
            async for entry in entries:
                yield event_from_entry(entry)
                sent += 1
                if sent == request.limit:
                    return

    async def _unary(self, stream: Stream[Req, Resp], handler: Unary[Req, Resp]) -> None:
        async def run(call: Call) -> None:
            response = await handler(self.d, call, await receive(stream))
            if call.reply_metadata:
                await stream.send_initial_metadata(metadata=call.reply_metadata)
            await stream.send_message(response)

        await self._guard(stream, run)

    async def _server_stream(
        self, stream: Stream[Req, Resp], produce: Callable[[Call, Req], AsyncGenerator[Resp, None]]
    ) -> None:
        async def run(call: Call) -> None:
            async with contextlib.aclosing(produce(call, await receive(stream))) as messages:
                async for message in messages:
                    await stream.send_message(message)

        await self._guard(stream, run)

    async def _guard(self, stream: Stream[Any, Any], run: Callable[[Call], Awaitable[None]]) -> None:
        """Authenticate, run, and turn every failure into its status with `x-error-code`."""
        call = current_call(stream)
        try:
            caller = self.d.auth.authenticate(text(call.metadata, "authorization"))
            call.caller = caller.name
            caller.authorize(call.rpc)
            await run(call)
        except (GRPCError, StreamTerminatedError, h2.exceptions.StreamClosedError):
            raise
        except DomainError as exc:
            await _fail(stream, call, Failure.of(exc))
        except DATABASE_OUTAGES as exc:
            logger.warning("gRPC {}: database unavailable: {}: {}", call.route, type(exc).__name__, exc)
            await _fail(stream, call, UNAVAILABLE)
        except Exception as exc:  # noqa: BLE001 - answered INTERNAL, details only in the log
            if isinstance(exc, SEND_FAILURES):
                await ended_if_caller_left()
            m.panics.labels("grpc").inc()
            logger.opt(exception=exc).error("gRPC {}: unhandled error", call.route)
            await _fail(stream, call, INTERNAL)
        end_if_cancelled()


async def _fail(stream: Stream[Any, Any], call: Call, failure: Failure) -> None:
    call.error_code = failure.code
    m.errors.labels(failure.code, "grpc").inc()
    await send_failure(stream, failure)

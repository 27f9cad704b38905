"""The gRPC side of the one error table: a domain error code gives the gRPC status named in `ERROR_TABLE`.

Every failed call carries trailing metadata `x-error-code` with the upper-case code of SPEC §2.6. Statuses
that no domain error produced (a deadline, grpclib's own refusals, a shutdown) get the code of `FALLBACK`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h2.exceptions
from grpclib.const import Status
from grpclib.server import Stream

from pandora_users.domain.errors import ERROR_TABLE, DomainError

ERROR_CODE_KEY = "x-error-code"
STATUS_OF: dict[str, Status] = {code: Status[grpc_name] for code, (_, grpc_name, _) in ERROR_TABLE.items()}
FALLBACK: dict[Status, str] = {
    Status.CANCELLED: "service_unavailable",
    Status.INVALID_ARGUMENT: "invalid_request",
    Status.DEADLINE_EXCEEDED: "service_busy",
    Status.NOT_FOUND: "not_found",
    Status.PERMISSION_DENIED: "forbidden",
    Status.RESOURCE_EXHAUSTED: "payload_too_large",
    Status.UNIMPLEMENTED: "not_found",
    Status.UNAVAILABLE: "service_unavailable",
    Status.UNAUTHENTICATED: "unauthorized",
}


@dataclass(frozen=True)
class Failure:
    """What a failed call answers: the §2.6 code, its gRPC status and a message."""

    code: str
    status: Status
    message: str

    @classmethod
    def of(cls, exc: DomainError) -> Failure:
        message = exc.message
        if exc.details:
            message += ": " + "; ".join(f"{d.field}: {d.message}" for d in exc.details)
        return cls(exc.code, STATUS_OF[exc.code], message)

    @property
    def trailers(self) -> dict[str, str]:
        return {ERROR_CODE_KEY: self.code.upper()}


INTERNAL = Failure("internal_error", Status.INTERNAL, "internal server error")
UNAVAILABLE = Failure("service_unavailable", Status.UNAVAILABLE, "service unavailable")


def fallback_code(status: Status) -> str:
    return FALLBACK.get(status, "internal_error")


# What writing an answer raises when the caller is gone (see `caller_gone`).
SEND_FAILURES = (h2.exceptions.ProtocolError, RuntimeError)


async def send_failure(stream: Stream[Any, Any], failure: Failure) -> None:
    """End the call with the failure's status, message and `x-error-code` (nothing when the caller is gone)."""
    try:
        await stream.send_trailing_metadata(
            status=failure.status, status_message=failure.message, metadata=failure.trailers
        )
    except h2.exceptions.StreamClosedError:  # the caller reset the stream: nobody to tell
        return
    except SEND_FAILURES:
        if not caller_gone(stream):
            raise
        await asyncio.sleep(0)  # the caller left: let grpclib's pending cancellation end the call


def caller_gone(stream: Stream[Any, Any]) -> bool:
    """True when the caller's connection is closing: grpclib closes it on the caller's GOAWAY or when it drops.

    grpclib then cancels the calls of that connection, but a call that was already resumed in the same loop
    iteration (its query answered, say) runs on until it writes, and that write fails (h2 ProtocolError "... in
    state CLOSED", or RuntimeError from the closed transport).
    """
    protocol = stream._stream
    return bool(protocol._transport.is_closing())

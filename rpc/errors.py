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


# What writing an answer raises when its caller has left: h2's ProtocolError ("... in state CLOSED"). The socket
# transport itself never raises here: writes go through `CoalescingTransport`, which drops what a closed
# connection can no longer take.
SEND_FAILURES = (h2.exceptions.ProtocolError,)


async def send_failure(stream: Stream[Any, Any], failure: Failure) -> None:
    """End the call with the failure's status, message and `x-error-code` (nothing when the caller is gone)."""
    try:
        await stream.send_trailing_metadata(
            status=failure.status, status_message=failure.message, metadata=failure.trailers
        )
    except h2.exceptions.StreamClosedError:  # the caller reset the stream: nobody to tell
        return
    except SEND_FAILURES:
        await ended_if_caller_left()
        raise


async def ended_if_caller_left() -> None:
    """After a write failed (SEND_FAILURES): end the call cancelled if its caller left; return if it did not.

    When a caller leaves (GOAWAY, or a dropped connection), grpclib closes the connection and cancels its calls.
    A call already resumed in that loop iteration (its query answered, say) runs on until it writes, and the
    write fails. One more turn of the loop lets a cancellation still on its way (a lost connection is reported one
    callback later) reach the call.
    """
    await asyncio.sleep(0)
    end_if_cancelled()


def end_if_cancelled() -> None:
    """End the call with CancelledError if its task was cancelled and the call got past it.

    grpclib expects a cancelled call to end with CancelledError and logs any other ending as an error ("Failed
    to handle cancellation"). A call cut off as its answer was being written was seen to end normally, its task
    cancelled all the same (its write failed, or went into the lost connection, which asyncio drops silently).
    Its caller never got the answer: it ends cancelled.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError

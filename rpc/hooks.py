"""grpclib event hooks: open a `Call` per request, and when its trailers go out, log it, count it and write
its access-log entry (SPEC §9.3: every UserService call that fails or writes; health and reflection never).

The hooks also count calls in flight (so shutdown can wait for them) and refuse new UserService calls with
UNAVAILABLE once shutdown has begun. A call the client cancelled (grpclib then reports UNKNOWN), or whose
trailers are never sent, is finished as CANCELLED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from grpclib.const import Status
from grpclib.events import RecvRequest, SendTrailingMetadata, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from loguru import logger
from opentelemetry.trace import Status as SpanStatus
from opentelemetry.trace import StatusCode

from pandora_users.audit.access_log import AccessLogEntry, AccessLogWriter
from pandora_users.audit.vocabulary import error_event_type
from pandora_users.observability import metrics as m
from pandora_users.observability import tracing
from rpc.calls import CURRENT, SERVICE, Call, text
from rpc.errors import ERROR_CODE_KEY, fallback_code

WARNING = frozenset({Status.UNAUTHENTICATED, Status.PERMISSION_DENIED, Status.RESOURCE_EXHAUSTED})
ERROR = frozenset({Status.INTERNAL, Status.UNAVAILABLE, Status.UNKNOWN, Status.DATA_LOSS})


def _cancelled() -> bool:
    """The call's task was cancelled: the client reset the stream (grpclib then reports UNKNOWN)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def level_of(status: Status) -> str:
    if status in ERROR:
        return "ERROR"
    return "WARNING" if status in WARNING else "INFO"


class CallObserver:
    def __init__(self, access_log: AccessLogWriter | None) -> None:
        self.access_log = access_log
        self.closing: Callable[[], bool] = lambda: False  # set by the server: True once shutdown has begun
        self.in_flight = 0  # UserService calls (health watchers never end by themselves: not waited for)
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending: set[asyncio.Task[None]] = set()

    def install(self, server: Server) -> None:
        listen(server, RecvRequest, self.on_request)
        listen(server, SendTrailingMetadata, self.on_trailers)

    async def wait_idle(self, timeout: float) -> bool:
        """True when every UserService call in flight has ended within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def on_request(self, event: RecvRequest) -> None:
        call = Call.open(event.method_name, event.metadata, event.peer, event.user_agent)
        CURRENT.set(call)
        if call.in_user_service:
            self.in_flight += 1
            self._idle.clear()
            open_span(call)
        m.soon_counter(m.grpc_active).add(1)
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda _: self._ended(call))
        if self.closing() and call.in_user_service:
            raise GRPCError(Status.UNAVAILABLE, "the server is shutting down")

    async def on_trailers(self, event: SendTrailingMetadata) -> None:
        call = CURRENT.get()
        if call is None or call.finished:
            return
        status = Status.CANCELLED if event.status is Status.UNKNOWN and _cancelled() else event.status
        if status is not Status.OK:
            call.error_code = call.error_code or fallback_code(status)
            if ERROR_CODE_KEY not in event.metadata:
                event.metadata[ERROR_CODE_KEY] = call.error_code.upper()
        event.metadata["x-request-id"] = call.request_id
        entry = self._finish(call, status)
        if entry is not None and self.access_log is not None:
            await self.access_log.record(entry)

    def _ended(self, call: Call) -> None:
        if call.in_user_service:
            self.in_flight -= 1
        m.soon_counter(m.grpc_active).add(-1)
        if not call.finished:
            entry = self._finish(call, Status.CANCELLED)
            if entry is not None and self.access_log is not None:
                task = asyncio.ensure_future(self.access_log.record(entry))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        if self.in_flight == 0:
            self._idle.set()

    def _finish(self, call: Call, status: Status) -> AccessLogEntry | None:
        """Log and count the call; its access-log entry when it is recorded."""
        call.finished = True
        close_span(call, status)
        duration = time.perf_counter() - call.started
        m.soon_counter(m.grpc_requests, call.route, status.name).add()
        m.soon_histogram(m.grpc_duration, call.route).observe(duration)
        logger.bind(
            listener="grpc",
            method="grpc",
            route=call.route,
            status=status.name,
            duration_ms=round(duration * 1000, 1),
            client_ip=call.peer_ip,
            request_id=call.request_id,
            user_id=str(call.user_id) if call.user_id else None,
            caller=call.caller,
            error=call.error_code,
        ).log(level_of(status), "gRPC {} {}", call.route, status.name)
        if not call.in_user_service:
            return None
        return access_entry(call, status, round(duration * 1000))


def open_span(call: Call) -> None:
    """The call's server span, continuing the caller's trace context, current for the rest of its task."""
    if not tracing.enabled():
        return
    carrier = {key: value for key in tracing.PROPAGATED if (value := text(call.metadata, key))}
    parent = tracing.extract(carrier)
    attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": call.rpc}
    call.span = tracing.start(call.route, kind=tracing.SERVER, parent=parent, attributes=attributes)
    tracing.enter(call.span, parent)


def close_span(call: Call, status: Status) -> None:
    call.span.set_attribute("rpc.grpc.status_code", status.value)
    if status in ERROR:
        call.span.set_status(SpanStatus(StatusCode.ERROR, status.name))
    call.span.end()


def access_entry(call: Call, status: Status, duration_ms: int) -> AccessLogEntry | None:
    """The entry of a failed call, or of a successful write (`authz_change`); None otherwise. A call the
    client cancelled did not fail: it is logged, not audited."""
    if status is Status.CANCELLED:
        return None
    kind = error_event_type(status.value, "grpc") if status is not Status.OK else None
    if kind is None and call.writes and status is Status.OK:
        kind = "authz_change"
    if kind is None:
        return None
    metadata: dict[str, str] = {"service": call.caller} if call.caller else {}
    if call.reason:
        metadata["reason"] = call.reason
    if call.reply_metadata.get("x-idempotency-replay"):
        metadata["idempotency_replay"] = "true"
    return AccessLogEntry.of(
        kind,
        status_code=status.value,
        listener="grpc",
        actor_type="service" if call.caller else "anonymous",
        method="grpc",
        route=call.route,
        user_id=call.user_id,
        actor_id=call.actor,
        actor_identifier=call.caller or "anonymous",
        resource_type="user" if call.user_id else None,
        resource_id=str(call.user_id) if call.user_id else None,
        ip_address=call.peer_ip,
        user_agent=call.user_agent,
        request_id=call.request_id,
        trace_id=call.trace_id,
        failure_reason=call.error_code if status is not Status.OK else None,
        duration_ms=duration_ms,
        metadata=metadata,
    )

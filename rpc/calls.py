"""One gRPC call: what is known about it (request id, peer, trace context, caller, subject, outcome), how its
request message is read (64 KiB cap), and the audit context its commands carry (SPEC §9.2).

The server's RecvRequest hook opens a `Call` and keeps it in `CURRENT` (a context variable: each call runs
in its own task), so the trailers hook can log and audit what the handler learnt.
"""

from __future__ import annotations

import re
import struct
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from grpclib.protocol import Peer
from grpclib.server import Stream
from multidict import MultiDict
from opentelemetry.trace import INVALID_SPAN, Span

from pandora_users.domain.context import Context
from pandora_users.domain.errors import DomainError, FieldError, InvalidRequest
from pandora_users.observability.tracing import trace_context

R = TypeVar("R")
SERVICE = "pandora.user.v1.UserService"
MAX_MESSAGE_BYTES = 64 * 1024
MAX_USER_AGENT = 512
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
UUID_TEXT = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
Metadata = MultiDict[str | bytes]


class MessageTooLarge(DomainError):
    code = "payload_too_large"


def text(metadata: Metadata | None, key: str) -> str | None:
    """A text metadata value (binary `-bin` values are not text)."""
    value = metadata.get(key) if metadata is not None else None
    return value if isinstance(value, str) else None


def parse_user_id(value: str, name: str = "user_id") -> UUID:
    """A UUID in canonical 36-character form (either case); INVALID_ARGUMENT `invalid user ID format`."""
    if not UUID_TEXT.match(value):
        raise InvalidRequest("invalid user ID format", details=[FieldError(name, "must be a UUID")])
    return UUID(value)


@dataclass
class Call:
    route: str
    metadata: Metadata
    peer_ip: str | None = None
    user_agent: str | None = None
    request_id: str = ""
    trace: tuple[str, str] | None = None
    started: float = field(default_factory=time.perf_counter)
    caller: str | None = None  # the service name once authenticated
    user_id: UUID | None = None  # the subject user, when known
    writes: bool = False  # a command call: audited on success too
    error_code: str | None = None
    reason: str | None = None
    reply_metadata: dict[str, str] = field(default_factory=dict)
    finished: bool = False
    span: Span = INVALID_SPAN  # the server span (SPEC §12.3), opened and ended by the server hooks

    @classmethod
    def open(cls, route: str, metadata: Metadata | None, peer: Peer | None, user_agent: str | None) -> Call:
        md: Metadata = metadata if metadata is not None else MultiDict()
        rid = text(md, "x-request-id")
        address = peer.addr() if peer is not None else None
        return cls(
            route=route,
            metadata=md,
            peer_ip=str(address[0]) if address else None,
            user_agent=user_agent[:MAX_USER_AGENT] if user_agent else None,
            request_id=rid if rid and REQUEST_ID.match(rid) else str(uuid.uuid4()),
            trace=trace_context(text(md, "traceparent")),
        )

    @property
    def rpc(self) -> str:
        return self.route.rsplit("/", 1)[-1]

    @property
    def in_user_service(self) -> bool:
        return self.route.startswith(f"/{SERVICE}/")

    @property
    def actor(self) -> str | None:
        return f"service:{self.caller}" if self.caller is not None else None

    @property
    def trace_id(self) -> str | None:
        """The server span's trace id when tracing is on, else the caller's (from `traceparent`)."""
        context = self.span.get_span_context()
        if context.is_valid:
            return f"{context.trace_id:032x}"
        return self.trace[1] if self.trace else None

    def context(self, **extra: str | None) -> Context:
        """The audit metadata of the commands this call issues (actor `service:<name>`, role `service`)."""
        metadata = {"actor_role": "service", "request_id": self.request_id}
        metadata |= {key: value for key, value in extra.items() if value}
        if self.caller is not None:
            metadata |= {"actor_id": f"service:{self.caller}", "service": self.caller}
        if self.peer_ip:
            metadata["ip_address"] = self.peer_ip
        if self.user_agent:
            metadata["user_agent"] = self.user_agent
        if self.trace is not None:
            metadata |= {"traceparent": self.trace[0], "trace_id": self.trace[1]}
        return Context(metadata=metadata).with_reason(self.reason)


CURRENT: ContextVar[Call | None] = ContextVar("pandora_rpc_call", default=None)


def current_call(stream: Stream[Any, Any]) -> Call:
    """The call the server hook opened for this task, or a new one (tests over grpclib's ChannelFor)."""
    call = CURRENT.get()
    if call is None:
        call = Call.open(stream._method_name, stream.metadata, stream.peer, stream.user_agent)
        CURRENT.set(call)
    return call


async def receive(stream: Stream[R, Any]) -> R:
    """The request message, refusing one over 64 KiB from its length prefix, before its body is read.

    grpclib has no message-size limit of its own and would buffer a message of any announced length, so the
    gRPC framing (1 flag byte, 4 length bytes) is read here from grpclib's HTTP/2 stream.
    """
    h2_stream = stream._stream
    prefix = await h2_stream.recv_data(5)
    if len(prefix) != 5:
        raise InvalidRequest("a request message is required")
    compressed, length = struct.unpack(">?I", prefix)
    if compressed:
        raise InvalidRequest("compressed messages are not supported")
    if length > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"request message of {length} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")
    data = await h2_stream.recv_data(length)
    message: R = stream._codec.decode(data, stream._recv_type)
    return message

"""One write per gRPC connection per event-loop iteration (`pandora_users.infra.transport`): grpclib writes each
HTTP/2 frame group as h2 builds it, three for a unary call's response and a WINDOW_UPDATE for its request."""

from __future__ import annotations

import asyncio
from typing import cast

from grpclib.protocol import H2Protocol
from grpclib.server import Server

from pandora_users.infra.transport import CoalescingTransport


class _CoalescingProtocol(asyncio.Protocol):
    """grpclib's protocol, given a `CoalescingTransport` instead of the socket's own."""

    def __init__(self, protocol: H2Protocol) -> None:
        self.protocol = protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes: no isinstance check here.
        coalescing = CoalescingTransport(cast(asyncio.Transport, transport), asyncio.get_running_loop())
        self.protocol.connection_made(coalescing)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()


class CoalescingServer(Server):
    """grpclib's `Server`, its connections writing through `CoalescingTransport`."""

    def _protocol_factory(self) -> H2Protocol:  # grpclib's factory for each accepted connection
        return _CoalescingProtocol(super()._protocol_factory())  # type: ignore[return-value]

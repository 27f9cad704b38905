"""One write per gRPC connection per event-loop iteration, instead of one per HTTP/2 frame group.

grpclib hands every frame group to the transport as soon as h2 has built it: a unary call's response is three
writes (HEADERS, DATA, trailing HEADERS), and the WINDOW_UPDATE for its request a fourth, each a `send` system
call, which costs more than the rest of the write on this kind of virtual machine. `CoalescingServer` gives
each connection's protocol a transport that collects the writes of one loop iteration and sends them with one
`writelines` at its end, in order: calls answered in the same iteration on one connection share it too.
Nothing waits longer than the rest of the iteration, and flow control is the real transport's, as before.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from grpclib.protocol import H2Protocol
from grpclib.server import Server


class CoalescingTransport:
    """A transport whose writes go out together at the end of the loop iteration they were made in."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.writelines(pending)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()  # a GOAWAY written just before closing still goes out
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, is_closing, pause_reading, ...
        return getattr(self._transport, name)


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

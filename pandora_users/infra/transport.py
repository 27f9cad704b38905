"""A transport that sends the writes of one event-loop iteration together, with one system call.

Protocol code (h2 under grpclib, uvicorn's HTTP/1.1) writes each piece of a response as soon as it has it: the
headers, then the body (HTTP/1.1); HEADERS, DATA and trailing HEADERS frames, and a WINDOW_UPDATE for the request
(gRPC). Each write is a `send` system call, which on this kind of virtual machine costs more than the rest of
the write. Wrapped in `CoalescingTransport`, a protocol's writes of one loop iteration leave together at its end,
in order, with one `writelines`: responses finished in the same iteration on one connection share it too.
Nothing waits longer than the rest of the iteration, and flow control stays the real transport's (it pauses and
resumes the protocol as before; `pause_reading` and everything else go straight to it).
"""

from __future__ import annotations

import asyncio
from typing import Any


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

"""The coalescing transport of the gRPC listener: one writelines per loop iteration, in order, nothing lost."""

from __future__ import annotations

import asyncio
from typing import Any

from rpc.transport import CoalescingTransport


class Recorder:
    """The socket's transport, as far as CoalescingTransport uses it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def writelines(self, chunks: list[bytes]) -> None:
        self.calls.append(("writelines", list(chunks)))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort", None))

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_the_writes_of_one_iteration_leave_together_in_order() -> None:
    inner = Recorder()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"headers")
    transport.write(b"")  # nothing to send, no empty chunk
    transport.writelines([bytearray(b"data"), memoryview(b"trailers")])
    assert inner.calls == []  # not before the end of the iteration
    await asyncio.sleep(0)
    assert inner.calls == [("writelines", [b"headers", b"data", b"trailers"])]
    transport.write(b"next")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert inner.calls[1:] == [("writelines", [b"next"])]
    assert transport.get_extra_info("peername") == "info:peername"  # everything else is the real transport's


async def test_close_sends_what_is_pending_first_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    inner = Recorder()
    transport = CoalescingTransport(inner, loop)  # type: ignore[arg-type]
    transport.write(b"goaway")
    transport.close()
    await asyncio.sleep(0)  # the scheduled flush finds nothing more to send
    assert inner.calls == [("writelines", [b"goaway"]), ("close", None)]
    aborted = Recorder()
    transport = CoalescingTransport(aborted, loop)  # type: ignore[arg-type]
    transport.write(b"lost")
    transport.abort()
    await asyncio.sleep(0)
    assert aborted.calls == [("abort", None)]


async def test_nothing_is_written_to_a_closing_transport() -> None:
    inner = Recorder()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"late")
    inner.closing = True  # the peer went away within the iteration
    await asyncio.sleep(0)
    assert inner.calls == []

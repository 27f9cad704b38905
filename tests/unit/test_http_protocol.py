"""The listeners' HTTP/1.1 protocol over a real socket: a response leaves in one write, a broken request gets the
SPEC §2.6 error shape and the connection closes after it."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
import uvicorn

from api.http_protocol import HttpProtocol
from pandora_users.infra.transport import CoalescingTransport


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


async def _serve() -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_app, http=HttpProtocol, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, int(sock.getsockname()[1])


async def _exchange(request: bytes) -> bytes:
    """Serve, send `request` on one connection, read until the server closes it, stop serving."""
    server, task, port = await _serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        data = await reader.read()
        writer.close()
    finally:
        server.should_exit = True
        await task
    return data


async def test_headers_and_body_leave_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[int] = []
    flush = CoalescingTransport.flush

    def counting(self: CoalescingTransport) -> None:
        flushed.append(len(self._pending))
        flush(self)

    monkeypatch.setattr(CoalescingTransport, "flush", counting)
    reply = await _exchange(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b'\r\n\r\n{"ok":true}')
    assert 2 in flushed and all(chunks <= 2 for chunks in flushed), flushed  # headers + body, together


async def test_a_broken_request_gets_the_error_shape_then_the_connection_closes() -> None:
    reply = await _exchange(b"GET / HTTP/1.1\r\nbad\x01header: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close" in head
    assert json.loads(body) == {
        "error": "invalid_request",
        "message": "malformed HTTP request",
        "code": "INVALID_REQUEST",
    }


def test_every_handler_that_takes_a_body_checks_it_first_and_reads_pay_nothing() -> None:
    """`strict_body` (SPEC §2.1) is the before-request hook of each POST/PUT/PATCH/DELETE handler, set per
    handler so that GETs skip the hook; a body route added without it would let the framework decode first."""
    from typing import Any, cast

    from api.app import create_public_app
    from api.body import strict_body

    app = create_public_app(cast(Any, None), cast(Any, None), max_body=1024)
    handlers = [h for route in app.routes for h in getattr(route, "route_handlers", ())]
    with_body = [h for h in handlers if h.http_methods & {"POST", "PUT", "PATCH", "DELETE"}]
    assert len(with_body) >= 15
    assert [h for h in with_body if h.resolve_before_request() is not strict_body] == []
    assert [h for h in handlers if h not in with_body and h.resolve_before_request() is not None] == []


def test_generated_request_ids_are_canonical_random_uuid4s() -> None:
    import uuid

    from api.edge import new_request_id

    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # every bit other than the version and variant bits varies
    ints = [uuid.UUID(rid).int for rid in ids]
    fixed = (0xF << 76) | (0x3 << 62)
    varying = 0
    for a in ints:
        varying |= a ^ ints[0]
    assert varying == ((1 << 128) - 1) & ~fixed

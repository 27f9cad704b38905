"""The HTTP/1.1 protocol our listeners run: uvicorn's httptools parser, with SPEC §2.6 errors for broken requests,
writing through a `CoalescingTransport` (a response's headers and body leave with one system call).

A request the parser itself refuses (a control character in a header, a malformed request line, a bad chunk size)
never reaches the application; uvicorn would answer it with a plain-text 400. We answer in the one error shape,
with the headers every response carries, and close the connection as uvicorn does.
"""

from __future__ import annotations

import asyncio

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.errors import error_body
from pandora_users.infra.transport import CoalescingTransport

_BODY = msgspec.json.encode(error_body("invalid_request", "malformed HTTP request"))
_HEADERS = (
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"x-frame-options: DENY\r\n"
    b"referrer-policy: no-referrer\r\n"
    b"cache-control: no-store\r\n"
    b"connection: close\r\n"
)


class HttpProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def send_400_response(self, msg: str) -> None:
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        self.transport.write(b"".join([*head, _HEADERS, b"\r\n", _BODY]))
        self.transport.close()

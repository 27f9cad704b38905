"""`Idempotency-Key` on POST commands (SPEC §2.12), as ASGI middleware in front of the handlers.

It runs before rate limiting, so a replay uses no rate-limit slot and executes nothing.
"""

from __future__ import annotations

from typing import Any

import msgspec

from api.errors import error_body
from api.idempotency import Begin, IdempotencyStore, Outcome, StoredResponse, validate_key
from pandora_users.domain.errors import DomainError
from pandora_users.security.tokens import TokenInvalid, TokenService

Scope = dict[str, Any]


class TooLarge(Exception):
    pass


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_json(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Any, exc: DomainError, scope: Scope) -> None:
    scope.setdefault("state", {})["error_code"] = exc.code
    body = msgspec.json.encode(error_body(exc.code, exc.message, **exc.extra))
    retry = exc.extra.get("retry_after_seconds")
    await _send_json(send, exc.http_status, body, [(b"retry-after", str(retry).encode())] if retry else [])


class IdempotencyMiddleware:
    def __init__(
        self, app: Any, store: IdempotencyStore, tokens: TokenService, *, listener: str, audience: str, max_body: int
    ) -> None:
        self.app, self.store, self.tokens = app, store, tokens
        self.listener, self.audience, self.max_body = listener, audience, max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        raw_key = _header(scope, b"idempotency-key")
        if scope["type"] != "http" or scope["method"] != "POST" or raw_key is None:
            await self.app(scope, receive, send)
            return
        try:
            key = validate_key(raw_key)
            body = await _read_body(receive, self.max_body)
        except DomainError as exc:
            await _send_error(send, exc, scope)
            return
        except TooLarge:
            await _send_json(send, 413, msgspec.json.encode(error_body("payload_too_large")), [])
            return
        name = f"{self.listener}|{self._subject(scope)}|POST|{scope['path']}"
        assert key is not None
        try:
            begin = await self.store.begin(name, key, body)
        except DomainError as exc:
            await _send_error(send, exc, scope)
            return
        if begin.outcome is Outcome.REPLAY and begin.response is not None:
            scope.setdefault("state", {})["idempotency_replay"] = True
            await self._replay(send, begin.response)
            return
        await self._execute(scope, body, send, name, key, begin)

    def _subject(self, scope: Scope) -> str:
        header = _header(scope, b"authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "anonymous"
        try:
            claims = self.tokens.verify_access(token, audience=self.audience)
        except TokenInvalid:
            return "anonymous"
        return claims.sub

    async def _replay(self, send: Any, stored: StoredResponse) -> None:
        headers = [(k.lower().encode(), v.encode()) for k, v in stored.headers.items()]
        await _send_json(send, stored.status, stored.body, [*headers, (b"x-idempotency-replay", b"true")])

    async def _execute(self, scope: Scope, body: bytes, send: Any, name: str, key: str, begin: Begin) -> None:
        sent = False

        async def replay_body() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status, settled = 500, begin.outcome is not Outcome.NEW
        headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def settle() -> None:
            nonlocal settled
            if not settled:
                settled = True
                await self.store.complete(name, key, StoredResponse(status, b"".join(chunks), headers))

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    # Store (2xx) or free (4xx/5xx) the key before the client can see the response, so a retry
                    # sent the moment it arrives never meets our own in-progress marker.
                    await settle()
            await send(message)

        try:
            await self.app(scope, replay_body, capture)
        finally:
            await settle()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None

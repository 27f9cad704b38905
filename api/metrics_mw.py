"""HTTP RED metrics for every request of a listener (route templates only, never raw paths)."""

from __future__ import annotations

import time
from typing import Any

from pandora_users.observability import metrics as m

Scope = dict[str, Any]


class MetricsMiddleware:
    def __init__(self, app: Any, *, listener: str) -> None:
        self.app, self.listener = app, listener

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, sent, received = time.perf_counter(), 500, 0, 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            received += len(message.get("body", b""))
            return message

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        active = m.http_active.labels(self.listener)
        active.inc()
        try:
            await self.app(scope, counting_receive, watch)
        finally:
            active.dec()
            route = scope.get("path_template") or "unmatched"
            method = scope["method"]
            m.http_requests.labels(self.listener, method, route, m.status_class(status)).inc()
            m.http_duration.labels(self.listener, method, route).observe(time.perf_counter() - started)
            m.http_request_size.labels(self.listener, method, route).observe(received)
            m.http_response_size.labels(self.listener, method, route).observe(sent)

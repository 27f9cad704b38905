"""The HTTP server span of SPEC §12.3, `<METHOD> <route>`, continuing the caller's `traceparent`.

It wraps a listener's whole stack, edge middleware included, so every response (unknown paths and the edge's
own errors too) is inside the span, and error bodies can carry its `trace_id` (§2.6). The route, client address
and user are read from the scope after the request: the router and the edge record them there.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import Status, StatusCode

from pandora_users.observability import tracing

Scope = dict[str, Any]


class TracingMiddleware:
    def __init__(self, app: Any, *, listener: str) -> None:
        self.app, self.listener = app, listener

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        status = 500

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        parent = tracing.extract_headers(scope.get("headers", ()))
        attributes = {"http.request.method": method, "pandora.listener": self.listener}
        with tracing.span(method, kind=tracing.SERVER, parent=parent, attributes=attributes) as span:
            try:
                await self.app(scope, receive, watch)
            finally:
                route = scope.get("path_template")
                span.update_name(f"{method} {route}" if route else method)
                state = scope.get("state") or {}
                principal = state.get("principal")
                found = {
                    "http.route": route,
                    "http.response.status_code": status,
                    "client.address": state.get("client_ip"),
                    "enduser.id": str(principal.user_id) if principal is not None else None,
                }
                span.set_attributes({key: value for key, value in found.items() if value is not None})
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))


def traced(app: Any, *, listener: str) -> Any:
    """`app` inside a server span per request when tracing is on; `app` itself (no cost) when it is off."""
    return TracingMiddleware(app, listener=listener) if tracing.enabled() else app

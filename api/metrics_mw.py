"""HTTP RED metrics for every request of a listener (route templates only, never raw paths).

Recorded in `SoonCounter`/`SoonHistogram`: written once per series at the end of each event-loop iteration
rather than once per request (see pandora_users/observability/metrics.py).
"""

from __future__ import annotations

import time
from typing import Any

from pandora_users.observability import metrics as m
from pandora_users.observability.metrics import SoonCounter, SoonHistogram

Scope = dict[str, Any]


class MetricsMiddleware:
    def __init__(self, app: Any, *, listener: str) -> None:
        self.app, self.listener = app, listener
        self.active = SoonCounter(m.http_active.labels(listener))
        # Each request's series, looked up once per (method, route, status class): a bounded set.
        self._series: dict[tuple[str, str, str], tuple[SoonCounter, SoonHistogram, SoonHistogram, SoonHistogram]] = {}

    def series(
        self, method: str, route: str, status: str
    ) -> tuple[SoonCounter, SoonHistogram, SoonHistogram, SoonHistogram]:
        key = (method, route, status)
        found = self._series.get(key)
        if found is None:
            labels = (self.listener, method, route)
            found = self._series[key] = (
                SoonCounter(m.http_requests.labels(*labels, status)),
                SoonHistogram(m.http_duration.labels(*labels)),
                SoonHistogram(m.http_request_size.labels(*labels)),
                SoonHistogram(m.http_response_size.labels(*labels)),
            )
        return found

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

        self.active.add(1)
        try:
            await self.app(scope, counting_receive, watch)
        finally:
            self.active.add(-1)
            route = scope.get("path_template") or "unmatched"
            count, duration, request_size, response_size = self.series(scope["method"], route, m.status_class(status))
            count.add()
            duration.observe(time.perf_counter() - started)
            request_size.observe(received)
            response_size.observe(sent)

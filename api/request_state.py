"""The per-request state dict handlers, hooks and middleware share (SPEC §12: the access log reads it)."""

from __future__ import annotations

from typing import Any


def state_of(request: Any) -> dict[str, Any]:
    """The dict in the request's scope that `request.state` wraps: Litestar builds a new `State`, with its lock, on
    every access of `request.state`. `api.edge.EdgeMiddleware` puts `request_id` and `client_ip` in it."""
    state: dict[str, Any] = request.scope.setdefault("state", {})
    return state

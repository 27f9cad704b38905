"""The rate limits of SPEC §7.4 by name, from the settings, applied through the Redis limiter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from litestar import Request

from api.ratelimit import Limit, RateLimiter
from api.request_state import state_of
from pandora_users.domain.errors import RateLimitExceeded

# limit name -> (requests, window seconds, in-memory fallback when Redis is down)
Table = dict[str, tuple[int, float, bool]]


def limit_table(settings: Any) -> Table:
    s = settings
    return {
        "ip": (s.rate_limit_requests_per_window, s.rate_limit_window_duration, False),
        "user": (s.rate_limit_user_requests_per_window, s.rate_limit_window_duration, False),
        "login-ip": (s.rate_limit_login_requests, s.rate_limit_login_window, True),
        "login-email": (s.rate_limit_login_requests, s.rate_limit_login_window, True),
        "register": (s.rate_limit_register_requests, s.rate_limit_register_window, True),
        "password-reset": (s.rate_limit_password_reset_requests, s.rate_limit_password_reset_window, True),
        "verification": (s.rate_limit_verification_requests, s.rate_limit_verification_window, True),
    }


@dataclass
class RequestLimits:
    """Checks a request's limits at once; refuses with 429 and leaves the headers for the response."""

    limiter: RateLimiter
    table: Table
    bucket: str = ""  # "admin|" keeps the admin listener's login buckets apart

    async def __call__(self, request: Request[Any, Any, Any], wanted: Sequence[tuple[str, str]]) -> dict[str, str]:
        limits = [self._limit(name, key) for name, key in wanted]
        decision = await self.limiter.hit(limits)
        headers = decision.headers()
        state = state_of(request)
        state["rate_headers"] = headers
        if not decision.allowed:
            state["rate_limit_name"] = decision.refused_by
            raise RateLimitExceeded(
                extra={"retry_after_seconds": decision.retry_after}, audit={"limit": decision.refused_by}
            )
        return headers

    def _limit(self, name: str, key: str) -> Limit:
        table_name = "password-reset" if name == "password-reset-email" else name
        count, window, fallback = self.table[table_name]
        return Limit(table_name, f"{self.bucket}{name}|{key}", count, window, fallback)

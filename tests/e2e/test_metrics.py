"""`/metrics` on the admin listener: SPEC §12.2 families with non-zero values after real traffic."""

from __future__ import annotations

import re
import time

import httpx

from tests.e2e.conftest import Api
from tests.e2e.test_public_api import PASSWORD, bearer, register

P = "pandora_user_service_"


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_families_after_traffic(api: Api) -> None:
    with api.client() as c:
        auth = register(c)
        email = auth["user"]["email"]
        c.post("/api/v1/auth/login", json={"email": email, "password": "wrong password!"})
        login = c.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}).json()
        c.post("/api/v1/auth/refresh", json={"refresh_token": login["refresh_token"]})
        c.post("/api/v1/auth/refresh", json={"refresh_token": login["refresh_token"]})  # reuse
        c.get("/api/v1/users/me", headers=bearer(auth))
        c.post("/api/v1/users/me/logout", json={"refresh_token": auth["refresh_token"]}, headers=bearer(auth))
        c.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})  # one session stays live
    deadline = time.monotonic() + 10  # the access log flushes within 1 s; projections follow within ms
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"{api.admin_url}/metrics", timeout=10).text
        if _value(text, P + "audit_logs_created_total") > 0 and _value(text, P + "redis_stream_publish_total") > 0:
            break
        time.sleep(0.2)
    assert httpx.get(f"{api.url}/metrics").status_code == 404  # only on the admin listener
    for family in [
        "http_requests_total",
        "http_request_duration_seconds_count",
        "user_registrations_total",
        "user_logins_total",
        "user_logouts_total",
        "token_refresh_total",
        "token_validation_total",
        "password_hash_duration_seconds_count",
        "event_append_duration_seconds_count",
        "events_appended_total",
        "projection_events_processed_total",
        "redis_stream_publish_total",
        "token_reuse_detected_total",
        "revocation_checks_total",
        "db_transactions_total",
        "event_store_head_position",
        "active_users",
        "active_sessions",
        "consistency_wait_seconds_count",
        "audit_logs_created_total",
        "errors_total",
    ]:
        assert _value(text, P + family) > 0, family
    assert _value(text, P + "user_logins_total", status="invalid_credentials") >= 1
    assert _value(text, P + "token_refresh_total", status="reuse") >= 1
    assert re.search(rf'{P}http_requests_total{{[^}}]*route="/api/v1/auth/login"', text)
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert routes and not [r for r in routes if re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", r)]  # templates, never ids

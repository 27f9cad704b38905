"""The public API over real HTTP against the real service process, PostgreSQL and Redis (SPEC §3)."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid

import httpx
import redis

from tests.e2e.conftest import Api

PASSWORD = "correct horse battery staple"


def _email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


def register(c: httpx.Client, email: str | None = None) -> dict:
    email = email or _email()
    r = c.post(
        "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "first_name": "Ann", "last_name": "Lee"}
    )
    assert r.status_code == 201, r.text
    return r.json()


def bearer(auth: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {auth['access_token']}"}


def stream_types(api: Api, user_id: str) -> list[str]:
    client = redis.Redis.from_url(api.redis_url)
    deadline = time.monotonic() + 10
    types: list[str] = []
    while time.monotonic() < deadline:
        entries = client.xrange(api.stream)
        types = [e[1][b"event_type"].decode() for e in entries if e[1][b"user_id"].decode() == user_id]
        if types and types[-1:] != []:
            time.sleep(0.2)
            entries = client.xrange(api.stream)
            return [e[1][b"event_type"].decode() for e in entries if e[1][b"user_id"].decode() == user_id]
        time.sleep(0.1)
    return types


def test_register_returns_tokens_and_user_and_events_reach_the_stream(api: Api) -> None:
    with api.client() as c:
        auth = register(c)
        assert auth["token_type"] == "Bearer" and auth["expires_in"] == 900 and len(auth["refresh_token"]) == 43
        assert auth["user"]["kyc_status"] == "pending" and auth["user"]["email_verified"] is False
        me = c.get("/api/v1/users/me", headers=bearer(auth))
        assert me.status_code == 200 and me.json() == auth["user"] and me.headers["etag"] == '"1"'
        assert me.headers["cache-control"] == "no-store"
    types = stream_types(api, auth["user"]["id"])
    assert types[:3] == ["user.registered", "user.logged_in", "user.email_verification.requested"]


def test_duplicate_email_in_any_case_is_409(api: Api) -> None:
    email = _email()
    with api.client() as c:
        register(c, email)
        r = c.post(
            "/api/v1/auth/register",
            json={"email": email.upper(), "password": PASSWORD, "first_name": "A", "last_name": "B"},
        )
    assert r.status_code == 409 and r.json()["error"] == "user_already_exists"


def test_login_failures_are_byte_identical(api: Api) -> None:
    email = _email()
    with api.client() as c:
        register(c, email)
        deleted = register(c)
        assert c.delete("/api/v1/users/me", headers=bearer(deleted)).status_code == 200
    bodies = set()
    attempts = [(email, "wrong password!"), (_email(), PASSWORD), (deleted["user"]["email"], PASSWORD), (email, "")]
    for login, password in attempts:
        with api.client() as c:
            r = c.post("/api/v1/auth/login", json={"email": login, "password": password})
        assert r.status_code == 401
        assert sorted(
            k for k in r.headers if not k.startswith("x-ratelimit") and k not in ("date", "x-request-id")
        ) == sorted(
            [
                "content-type",
                "content-length",
                "cache-control",
                "pragma",
                "x-content-type-options",
                "x-frame-options",
                "referrer-policy",
                "content-security-policy",
            ]
        )
        bodies.add(r.content)
    assert bodies == {
        b'{"error":"invalid_credentials","message":"invalid email or password","code":"INVALID_CREDENTIALS"}'
    }


def test_refresh_rotation_and_reuse_revokes_the_family(api: Api) -> None:
    with api.client() as c:
        auth = register(c)
        first = c.post("/api/v1/auth/refresh", json={"refresh_token": auth["refresh_token"]})
        assert first.status_code == 200 and first.json()["session_id"] == auth["session_id"]
        reuse = c.post("/api/v1/auth/refresh", json={"refresh_token": auth["refresh_token"]})
        assert reuse.status_code == 401 and reuse.json()["error"] == "invalid_refresh_token"
        newest = c.post("/api/v1/auth/refresh", json={"refresh_token": first.json()["refresh_token"]})
        assert newest.status_code == 401
        assert c.get("/api/v1/users/me", headers=bearer(first.json())).status_code == 401
    assert "user.token_reuse_detected" in stream_types(api, auth["user"]["id"])


def test_two_concurrent_refreshes_exactly_one_200(api: Api) -> None:
    with api.client() as c:
        auth = register(c)

    def refresh() -> int:
        with api.client() as c:
            return c.post("/api/v1/auth/refresh", json={"refresh_token": auth["refresh_token"]}).status_code

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        codes = sorted(pool.map(lambda _: refresh(), range(2)))
    assert codes == [200, 401]


def test_logout_of_another_users_token_is_refused(api: Api) -> None:
    with api.client() as c:
        ann, bob = register(c), register(c)
        r = c.post("/api/v1/users/me/logout", json={"refresh_token": ann["refresh_token"]}, headers=bearer(bob))
        assert r.status_code == 401 and r.json()["error"] == "invalid_refresh_token"
        ok = c.post("/api/v1/users/me/logout", json={"refresh_token": ann["refresh_token"]}, headers=bearer(ann))
        assert ok.status_code == 200
        assert c.get("/api/v1/users/me", headers=bearer(ann)).json()["message"] == "session has been revoked"


def test_revoked_session_access_token_refused_immediately(api: Api) -> None:
    with api.client() as c:
        auth = register(c)
        other = c.post("/api/v1/auth/login", json={"email": auth["user"]["email"], "password": PASSWORD}).json()
        r = c.delete(f"/api/v1/users/me/sessions/{other['session_id']}", headers=bearer(auth))
        assert r.status_code == 200
        assert c.get("/api/v1/users/me", headers=bearer(other)).status_code == 401
        assert c.get("/api/v1/users/me", headers=bearer(auth)).status_code == 200
        unknown = c.delete(f"/api/v1/users/me/sessions/{uuid.uuid4()}", headers=bearer(auth))
        assert unknown.status_code == 404 and unknown.json()["error"] == "session_not_found"


def test_lockout_after_the_configured_failures(api: Api) -> None:
    with api.client() as c:
        email = register(c)["user"]["email"]
    codes = []
    for _ in range(4):  # LOCKOUT_THRESHOLD=3 for this service; fresh IPs so the login-ip limit does not interfere
        with api.client() as c:
            codes.append(c.post("/api/v1/auth/login", json={"email": email, "password": "wrong password!"}).status_code)
    assert codes == [401, 401, 401, 423]
    with api.client() as c:
        locked = c.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert locked.status_code == 423 and int(locked.headers["retry-after"]) >= 1
    assert locked.json()["retry_after_seconds"] >= 1


def test_sixth_login_in_15_minutes_is_429_with_headers(api: Api) -> None:
    with api.client() as c:
        email = register(c)["user"]["email"]
        codes = [
            c.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}).status_code for _ in range(6)
        ]
        last = c.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert codes == [200] * 5 + [429]
    assert last.status_code == 429 and last.json()["error"] == "rate_limit_exceeded"
    assert int(last.headers["retry-after"]) >= 1 and last.headers["x-ratelimit-remaining"] == "0"
    assert int(last.headers["x-ratelimit-limit"]) == 5


def _stream_metadata(api: Api, user_id: str) -> dict:
    stream_types(api, user_id)  # waits for the user's events to arrive
    entries = redis.Redis.from_url(api.redis_url).xrange(api.stream)
    return next(json.loads(e[1][b"metadata"]) for e in entries if e[1][b"user_id"].decode() == user_id)


def test_only_a_well_formed_traceparent_is_kept_in_the_audit_metadata(api: Api) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with api.client() as c:
        c.headers["traceparent"] = f"00-{trace}-00f067aa0ba902b7-01"
        good = register(c)["user"]["id"]
        c.headers["traceparent"] = "00-<script>-ffffffffffffffff-01 plus anything a caller wants in the log"
        bad = register(c)["user"]["id"]
    assert _stream_metadata(api, good)["trace_id"] == trace
    assert not {"traceparent", "trace_id"} & set(_stream_metadata(api, bad))


def test_malformed_bodies_count_against_the_ip_window(api: Api) -> None:
    """SPEC §7.4: every unauthenticated request counts, including one refused for its body."""
    with api.client() as c:
        bad = {"Content-Type": "application/json"}
        codes = [c.post("/api/v1/auth/login", content=b"{bad", headers=bad).status_code for _ in range(100)]
        last = c.post("/api/v1/auth/login", content=b"{bad", headers=bad)
    assert codes == [400] * 100
    assert last.status_code == 429 and last.json()["error"] == "rate_limit_exceeded"
    assert last.headers["x-ratelimit-limit"] == "100"


def test_profile_update_if_match_and_read_your_writes(api: Api) -> None:
    with api.client() as c:
        auth = register(c)
        h = bearer(auth)
        stale = c.patch("/api/v1/users/me", json={"first_name": "Zed"}, headers={**h, "If-Match": '"9"'})
        assert stale.status_code == 412 and stale.json()["current_version"] == 1
        weak = c.patch("/api/v1/users/me", json={"first_name": "Zed"}, headers={**h, "If-Match": 'W/"1"'})
        assert weak.status_code == 400


def test_a_read_with_the_consistency_token_never_shows_the_old_state(api: Api) -> None:
    """200 command-then-read pairs, the read from another client with only the token (SPEC §2.10).

    Spread over 10 users so that the per-user rate limit (60/min) is not what is tested."""
    for _ in range(10):
        with api.client() as c:
            h = bearer(register(c))
            for i in range(20):
                r = c.put("/api/v1/users/me", json={"first_name": f"Name{i}", "last_name": "Lee"}, headers=h)
                assert r.status_code == 200 and r.headers["etag"] == f'"{i + 2}"'
                with api.client() as other:
                    got = other.get(
                        "/api/v1/users/me", headers={**h, "X-Consistency-Token": r.headers["x-consistency-token"]}
                    )
                assert got.status_code == 200 and got.json()["first_name"] == f"Name{i}"


def test_password_change_keeps_caller_and_revokes_others(api: Api) -> None:
    with api.client() as c:
        auth = register(c)
        other = c.post("/api/v1/auth/login", json={"email": auth["user"]["email"], "password": PASSWORD}).json()
        bad = c.post(
            "/api/v1/users/me/password",
            json={"current_password": "nope nope", "new_password": "another fine passphrase"},
            headers=bearer(auth),
        )
        assert bad.status_code == 401 and bad.json()["error"] == "invalid_credentials"
        r = c.post(
            "/api/v1/users/me/password",
            json={"current_password": PASSWORD, "new_password": "another fine passphrase"},
            headers=bearer(auth),
        )
        assert r.status_code == 200
        assert c.get("/api/v1/users/me", headers=bearer(auth)).status_code == 200
        assert c.get("/api/v1/users/me", headers=bearer(other)).status_code == 401


def test_delete_me_then_old_token_is_404_and_email_stays_taken(api: Api) -> None:
    with api.client() as c:
        auth = register(c)
        assert c.delete("/api/v1/users/me", headers=bearer(auth)).json() == {"message": "account deleted successfully"}
        gone = c.get("/api/v1/users/me", headers=bearer(auth))
        assert gone.status_code == 404 and gone.json()["error"] == "user_not_found"
        again = c.post(
            "/api/v1/auth/register",
            json={"email": auth["user"]["email"], "password": PASSWORD, "first_name": "A", "last_name": "B"},
        )
        assert again.status_code == 409


def test_logout_all_then_same_token_is_401(api: Api) -> None:
    with api.client() as c:
        auth = register(c)
        assert c.post("/api/v1/users/me/logout-all", headers=bearer(auth)).status_code == 200
        assert c.post("/api/v1/users/me/logout-all", headers=bearer(auth)).status_code == 401


def test_kyc_resubmission_rules_and_email_verification(api: Api) -> None:
    with api.client() as c:
        auth = register(c)
        r = c.patch("/api/v1/users/me/kyc", json={"status": "pending"}, headers=bearer(auth))
        assert r.status_code == 409 and r.json()["error"] == "invalid_kyc_transition"
        r = c.patch("/api/v1/users/me/kyc", json={"status": "verified"}, headers=bearer(auth))
        assert r.status_code == 400 and r.json()["error"] == "invalid_kyc_status"
        bad = c.post("/api/v1/auth/verify-email", json={"token": "x" * 43})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_token"
        resend = c.post("/api/v1/auth/verify-email/resend", headers=bearer(auth))
        assert resend.status_code == 202 and resend.json() == {"message": "verification email sent"}


def test_forgot_password_same_answer_and_at_least_250_ms(api: Api) -> None:
    with api.client() as c:
        email = register(c)["user"]["email"]
    answers = []
    for target in (email, _email()):
        with api.client() as c:
            started = time.monotonic()
            r = c.post("/api/v1/auth/password/forgot", json={"email": target})
            answers.append((r.status_code, r.content, time.monotonic() - started >= 0.25))
    assert answers[0] == answers[1] and answers[0][0] == 202 and answers[0][2]


def test_idempotency_key_replays_the_first_response(api: Api) -> None:
    email = _email()
    body = {"email": email, "password": PASSWORD, "first_name": "Ann", "last_name": "Lee"}
    with api.client() as c:
        first = c.post("/api/v1/auth/register", json=body, headers={"Idempotency-Key": "k-" + email})
        second = c.post("/api/v1/auth/register", json=body, headers={"Idempotency-Key": "k-" + email})
        other = c.post(
            "/api/v1/auth/register", json={**body, "first_name": "Bo"}, headers={"Idempotency-Key": "k-" + email}
        )
        bad = c.post("/api/v1/auth/register", json=body, headers={"Idempotency-Key": ""})
    assert first.status_code == 201 and second.status_code == 201
    assert second.headers["x-idempotency-replay"] == "true" and second.content == first.content
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_idempotency_key"


def test_failed_logins_are_in_the_access_log(api: Api) -> None:
    import psycopg

    email = _email()
    with api.client() as c:
        request_id = f"req-{uuid.uuid4().hex}"
        c.post(
            "/api/v1/auth/login", json={"email": email, "password": "whatever!"}, headers={"X-Request-ID": request_id}
        )
    deadline = time.monotonic() + 5
    rows: list[tuple] = []
    while time.monotonic() < deadline and not rows:
        with psycopg.connect(api.database_url) as conn:
            rows = conn.execute(
                "SELECT event_type, category, severity, status, status_code, actor_identifier, failure_reason"
                " FROM access_log WHERE request_id = %s",
                (request_id,),
            ).fetchall()
        time.sleep(0.2)
    assert rows == [("authn_login_fail", "authentication", "warning", "failure", 401, email, "invalid_credentials")]


def test_system_endpoints(api: Api) -> None:
    with api.client() as c:
        assert c.get("/health").json() == {"status": "healthy"}
        ready = c.get("/ready").json()
        assert ready["status"] == "ready"
        jwks = c.get("/.well-known/jwks.json")
        assert jwks.headers["cache-control"] == "public, max-age=300" and jwks.json()["keys"][0]["kty"] == "OKP"
        doc = c.get("/openapi.json").json()
        assert doc["openapi"].startswith("3.1") and "/api/v1/auth/login" in doc["paths"]
        assert "bearerAuth" in json.dumps(doc["components"])
        assert c.get("/api/v1/users/me/").status_code == 404
        assert c.request("TRACE", "/health").status_code == 405

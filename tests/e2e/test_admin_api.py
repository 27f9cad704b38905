"""The admin API over real HTTP against the real service process (SPEC §4, §2.5, §2.11, §9.3)."""

from __future__ import annotations

import base64
import concurrent.futures
import itertools
import json
import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.conftest import Api
from tests.e2e.procs import run_cli
from tests.e2e.test_public_api import PASSWORD, bearer, register

ADMIN = "/api/v1/admin"
OWN = "administrators cannot perform this action on their own account"
_ips = itertools.count(1)


def admin_client(api: Api) -> httpx.Client:
    n = next(_ips)
    headers = {"X-Forwarded-For": f"172.16.{(n >> 8) & 255}.{n & 255}", "User-Agent": "e2e-admin"}
    return httpx.Client(base_url=api.admin_url, headers=headers, timeout=30)


def create_admin(api: Api, email: str | None = None) -> dict[str, Any]:
    """A new administrator (CLI create-admin), logged in on the admin API: its AuthResponse."""
    email = email or f"admin-{uuid.uuid4().hex[:10]}@example.com"
    workdir = api.service.log.parent
    made = run_cli("create-admin", "--email", email, env=api.env, cwd=workdir, stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    with admin_client(api) as c:
        r = c.post(f"{ADMIN}/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()


_roots: dict[str, dict[str, Any]] = {}


def new_admin(api: Api) -> dict[str, Any]:
    """A fresh administrator, logged in on the admin API: a registered user promoted by the one CLI-made admin
    (one `create-admin` per service keeps the tests fast; one admin per test keeps each under the user limit)."""
    if api.admin_url not in _roots:
        _roots[api.admin_url] = create_admin(api)
    with api.client() as c:
        user = register(c)
    with admin_client(api) as c:
        promoted = c.put(
            f"{ADMIN}/users/{user['user']['id']}/role",
            json={"role": "admin", "reason": "e2e administrator"},
            headers=bearer(_roots[api.admin_url]),
        )
        assert promoted.status_code == 200, promoted.text
        r = c.post(f"{ADMIN}/auth/login", json={"email": user["user"]["email"], "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def wait_for(fetch: Any, ready: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture
def admin(api: Api) -> dict[str, Any]:
    return new_admin(api)


ROUTES = [
    ("POST", "/auth/logout", {"refresh_token": "x"}),
    ("GET", "/users", None),
    ("GET", "/users/search?query=a", None),
    ("GET", "/users/{id}", None),
    ("DELETE", "/users/{id}", None),
    ("GET", "/users/{id}/history", None),
    ("PATCH", "/users/{id}/kyc", {"status": "verified"}),
    ("PUT", "/users/{id}/role", {"role": "admin"}),
    ("POST", "/users/{id}/restore", None),
    ("POST", "/users/{id}/erase", {"reason": "r"}),
    ("POST", "/users/{id}/unlock", None),
    ("GET", "/users/{id}/sessions", None),
    ("GET", "/sessions", None),
    ("DELETE", "/sessions/{id}", None),
    ("GET", "/stats", None),
    ("GET", "/events", None),
    ("GET", "/access-log", None),
]


def test_every_admin_route_refuses_missing_public_and_non_admin_tokens(api: Api, admin: dict[str, Any]) -> None:
    with api.client() as c:
        user = register(c)
        admins_public = c.post(
            "/api/v1/auth/login", json={"email": admin["user"]["email"], "password": PASSWORD}
        ).json()
    assert claims(admins_public["access_token"])["aud"] == "pandora-api"
    target = user["user"]["id"]
    for method, path, body in ROUTES:
        url = ADMIN + path.replace("{id}", target)
        for headers, status, message in (
            ({}, 401, "missing authorization header"),
            (bearer(user), 403, "admin access required"),
            (bearer(admins_public), 403, "admin access required"),
        ):
            with admin_client(api) as c:
                r = c.request(method, url, json=body, headers=headers)
            assert (r.status_code, r.json()["message"]) == (status, message), (method, path, r.text)
            assert r.json()["error"] == ("unauthorized" if status == 401 else "forbidden")
    with api.client() as c:
        refused = c.get("/api/v1/users/me", headers=bearer(admin))
    assert refused.status_code == 401 and refused.json()["message"] == "invalid or expired access token"


def test_listeners_do_not_serve_each_others_paths(api: Api, admin: dict[str, Any]) -> None:
    with api.client() as c:
        assert c.get(f"{ADMIN}/users", headers=bearer(admin)).json()["error"] == "not_found"
        assert c.post(f"{ADMIN}/auth/login", json={"email": "a@b.co", "password": "x"}).status_code == 404
        assert c.get("/metrics").status_code == 404
    with admin_client(api) as c:
        assert c.get("/api/v1/users/me", headers=bearer(admin)).status_code == 404
        assert c.post("/api/v1/auth/login", json={"email": "a@b.co", "password": "x"}).status_code == 404
        assert c.get(f"{ADMIN}/users/", headers=bearer(admin)).status_code == 404
        assert c.get("/health").json() == {"status": "healthy"}
        assert c.get("/ready").json()["status"] in ("ready", "degraded")
        assert c.get("/metrics").status_code == 200
        doc = c.get("/openapi.json").json()
    operations = [(m.upper(), path, op) for path, item in doc["paths"].items() for m, op in item.items()]
    admin_ops = [(m, path, op) for m, path, op in operations if path.startswith(ADMIN)]
    assert len(admin_ops) == 19 and not any(path.startswith("/api/v1/users") for _, path, _ in operations)
    for _, path, op in admin_ops:
        public = path.endswith(("/auth/login", "/auth/refresh"))
        assert op.get("security") == (None if public else [{"bearerAuth": []}]), path
        assert {"400", "429", "500"} <= set(op["responses"]) and ("403" in op["responses"]) != public, path
        assert "ErrorResponse" in json.dumps(op["responses"]["400"]), path
    assert "bearerAuth" in doc["components"]["securitySchemes"]


def test_admin_login_refresh_logout(api: Api, admin: dict[str, Any]) -> None:
    token = claims(admin["access_token"])
    assert (token["aud"], token["role"], token["sub"]) == ("pandora-admin", "admin", admin["user"]["id"])
    with api.client() as c:
        public = c.post("/api/v1/auth/login", json={"email": admin["user"]["email"], "password": PASSWORD}).json()
        wrong_way = c.post("/api/v1/auth/refresh", json={"refresh_token": admin["refresh_token"]})
    assert wrong_way.status_code == 401 and wrong_way.json()["error"] == "invalid_refresh_token"
    with admin_client(api) as c:
        refused = c.post(f"{ADMIN}/auth/refresh", json={"refresh_token": public["refresh_token"]})
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_refresh_token"
        fresh = c.post(f"{ADMIN}/auth/refresh", json={"refresh_token": admin["refresh_token"]})
        assert fresh.status_code == 200 and claims(fresh.json()["access_token"])["aud"] == "pandora-admin"
        new = fresh.json()
        stale = c.post(f"{ADMIN}/auth/logout", json={"refresh_token": admin["refresh_token"]}, headers=bearer(new))
        assert stale.status_code == 401 and stale.json()["error"] == "invalid_refresh_token"
        out = c.post(f"{ADMIN}/auth/logout", json={"refresh_token": new["refresh_token"]}, headers=bearer(new))
        assert out.status_code == 200 and out.json() == {"message": "logged out successfully"}
        revoked = c.get(f"{ADMIN}/stats", headers=bearer(new))
    assert revoked.status_code == 401 and revoked.json()["message"] == "session has been revoked"


def test_admin_login_of_a_non_admin_is_the_wrong_password_answer_and_logged_high(api: Api) -> None:
    with api.client() as c:
        user = register(c)
    email = user["user"]["email"]
    request_id = f"adm-{uuid.uuid4().hex}"
    with admin_client(api) as c:
        not_admin = c.post(
            f"{ADMIN}/auth/login", json={"email": email, "password": PASSWORD}, headers={"X-Request-ID": request_id}
        )
        wrong = c.post(f"{ADMIN}/auth/login", json={"email": email, "password": "not the password"})
    assert not_admin.status_code == wrong.status_code == 401
    assert not_admin.content == wrong.content
    assert not_admin.json() == {
        "error": "invalid_credentials",
        "message": "invalid email or password",
        "code": "INVALID_CREDENTIALS",
    }

    def row() -> Any:
        with psycopg.connect(api.database_url) as conn:
            return conn.execute(
                "SELECT event_type, severity, listener, metadata->>'reason' FROM access_log WHERE request_id = %s",
                (request_id,),
            ).fetchone()

    assert wait_for(row, lambda r: r is not None) == ("authn_admin_login_fail", "high", "admin", "not_admin")


def test_kyc_role_delete_restore_with_if_match_reason_and_actor(api: Api, admin: dict[str, Any]) -> None:
    with api.client() as c:
        user = register(c)
    uid, h = user["user"]["id"], bearer(admin)
    with admin_client(api) as c:
        got = c.get(f"{ADMIN}/users/{uid.upper()}", headers=h)
        assert got.status_code == 200 and got.headers["etag"] == '"1"' and got.json()["version"] == 1
        assert got.json()["is_active"] is True and got.json()["email"] == user["user"]["email"]
        stale = c.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "verified"}, headers={**h, "If-Match": '"7"'})
        assert stale.status_code == 412 and stale.json()["current_version"] == 1
        bad = c.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "approved"}, headers=h)
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_kyc_status"
        reason = "documents checked\nby compliance"
        kyc = c.patch(
            f"{ADMIN}/users/{uid}/kyc",
            json={"status": "verified", "reason": f"  {reason} "},
            headers={**h, "If-Match": '"1"', "User-Agent": "compliance-console"},
        )
        assert kyc.status_code == 200, kyc.text
        assert kyc.json()["kyc_status"] == "verified" and kyc.headers["etag"] == '"2"'
        same = c.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "verified"}, headers={**h, "If-Match": '"2"'})
        assert same.status_code == 200 and same.headers["etag"] == '"2"' and "x-consistency-token" not in same.headers
        bad_role = c.put(f"{ADMIN}/users/{uid}/role", json={"role": "root"}, headers=h)
        assert bad_role.status_code == 400 and bad_role.json()["error"] == "invalid_role"
        role = c.put(f"{ADMIN}/users/{uid}/role", json={"role": "admin"}, headers=h)
        assert role.status_code == 200 and role.json()["role"] == "admin" and role.json()["version"] == 3
        history = c.get(f"{ADMIN}/users/{uid}/history", params={"type": "user.kyc.updated"}, headers=h).json()
    with api.client() as c:
        assert c.get("/api/v1/users/me", headers=bearer(user)).status_code == 401  # role change ended the session
    (event,) = history["events"]
    assert event["payload"] == {"email": user["user"]["email"], "kyc_status": "verified", "old_status": "pending"}
    meta = event["metadata"]
    assert (meta["actor_id"], meta["actor_role"], meta["reason"]) == (admin["user"]["id"], "admin", reason)
    assert meta["user_agent"] == "compliance-console" and meta["ip_address"].startswith("172.16.")
    assert meta["request_id"] == kyc.headers["x-request-id"]


def test_delete_restore_and_self_actions(api: Api, admin: dict[str, Any]) -> None:
    with api.client() as c:
        user = register(c)
    uid, h, me = user["user"]["id"], bearer(admin), admin["user"]["id"]
    with admin_client(api) as c:
        for method, path, body in (
            ("PATCH", "/kyc", {"status": "rejected"}),
            ("PUT", "/role", {"role": "user"}),
            ("DELETE", "", None),
            ("POST", "/erase", {"reason": "test"}),
        ):
            r = c.request(method, f"{ADMIN}/users/{me}{path}", json=body, headers=h)
            assert (r.status_code, r.json()["error"], r.json()["message"]) == (403, "forbidden", OWN), path
        gone = c.request("DELETE", f"{ADMIN}/users/{uid}", json={"reason": "fraud"}, headers={**h, "If-Match": '"1"'})
        assert gone.status_code == 200 and gone.json()["is_active"] is False and gone.json()["deleted_at"]
        again = c.delete(f"{ADMIN}/users/{uid}", headers=h)
        assert again.status_code == 200 and again.json()["version"] == gone.json()["version"]
        assert c.get(f"{ADMIN}/users/{uid}", headers=h).json()["deleted_at"] == gone.json()["deleted_at"]
        listed = c.get(f"{ADMIN}/users", params={"limit": 100}, headers=h).json()["users"]
        assert uid not in {u["id"] for u in listed}
        with_deleted = c.get(f"{ADMIN}/users", params={"include_deleted": "true", "limit": 100}, headers=h).json()
        assert uid in {u["id"] for u in with_deleted["users"]}
        kyc_deleted = c.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "verified"}, headers=h)
        assert kyc_deleted.status_code == 404 and kyc_deleted.json()["error"] == "user_not_found"
        key = {**h, "Idempotency-Key": f"restore-{uid}"}
        restored = c.post(f"{ADMIN}/users/{uid}/restore", json={"reason": "appeal"}, headers=key)
        assert restored.status_code == 200 and restored.json()["is_active"] is True
        replay = c.post(f"{ADMIN}/users/{uid}/restore", json={"reason": "appeal"}, headers=key)
        assert replay.headers["x-idempotency-replay"] == "true" and replay.content == restored.content
        assert (
            c.post(f"{ADMIN}/users/{uid}/restore", json={}, headers=h).json()["version"] == restored.json()["version"]
        )
        unknown = c.post(f"{ADMIN}/users/{uuid.uuid4()}/restore", headers=h)
        assert unknown.status_code == 404 and unknown.json()["error"] == "user_not_found"
    with api.client() as c:
        login = c.post("/api/v1/auth/login", json={"email": user["user"]["email"], "password": PASSWORD})
    assert login.status_code == 200


def test_unlock_sessions_and_revocation(api: Api, admin: dict[str, Any]) -> None:
    with api.client() as c:
        user = register(c)
        second = c.post("/api/v1/auth/login", json={"email": user["user"]["email"], "password": PASSWORD}).json()
    uid, h = user["user"]["id"], bearer(admin)
    for _ in range(3):  # LOCKOUT_THRESHOLD=3 for this service
        with api.client() as c:
            c.post("/api/v1/auth/login", json={"email": user["user"]["email"], "password": "wrong password!"})
    with admin_client(api) as c:
        locked = wait_for(lambda: c.get(f"{ADMIN}/users/{uid}", headers=h).json(), lambda u: u["is_locked"])
        assert locked["is_locked"] is True and locked["locked_until"]
        unlocked = c.post(f"{ADMIN}/users/{uid}/unlock", json={"reason": "called the user"}, headers=h)
        assert unlocked.status_code == 200 and unlocked.json()["is_locked"] is False
        assert unlocked.json()["locked_until"] is None
        sessions = c.get(f"{ADMIN}/users/{uid}/sessions", headers=h).json()
        assert [s["id"] for s in sessions["sessions"]] == [second["session_id"], user["session_id"]]
        first = sessions["sessions"][1]
        assert (first["status"], first["email"], first["first_name"], first["ended_at"]) == (
            "active",
            user["user"]["email"],
            "Ann",
            None,
        )
        assert first["user_agent"] == "e2e-tests" and first["audience"] == "pandora-api" and "current" not in first
        live = c.get(f"{ADMIN}/sessions", params={"limit": 100}, headers=h).json()
        assert {second["session_id"], user["session_id"], admin["session_id"]} <= {s["id"] for s in live["sessions"]}
        assert live["total"] >= 3
        revoked = c.request(
            "DELETE", f"{ADMIN}/sessions/{second['session_id']}", json={"reason": "suspicious"}, headers=h
        )
        assert revoked.status_code == 200 and revoked.json() == {"message": "session revoked successfully"}
        twice = c.delete(f"{ADMIN}/sessions/{second['session_id']}", headers=h)
        assert twice.status_code == 404 and twice.json()["error"] == "session_not_found"
        assert c.delete(f"{ADMIN}/sessions/{uuid.uuid4()}", headers=h).status_code == 404
        everything = c.get(f"{ADMIN}/users/{uid}/sessions", params={"status": "all"}, headers=h).json()
        ended = next(s for s in everything["sessions"] if s["id"] == second["session_id"])
        assert (ended["status"], ended["end_reason"]) == ("ended", "admin_revoked") and ended["ended_at"]
        assert c.get(f"{ADMIN}/users/{uid}/sessions", headers=h).json()["total"] == 1
        assert c.get(f"{ADMIN}/users/{uuid.uuid4()}/sessions", headers=h).status_code == 404
    with api.client() as c:
        assert c.get("/api/v1/users/me", headers=bearer(second)).status_code == 401
        assert c.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}).status_code == 401
        assert c.get("/api/v1/users/me", headers=bearer(user)).status_code == 200


def test_lists_filters_pagination_search_and_stats(api: Api, admin: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex[:8]
    with api.client() as c:
        made = [register(c, f"pct{i}_{tag}%{i}@example.com") for i in range(3)]
        plain = register(c, f"pct0x{tag}x0@example.com")
    h = bearer(admin)
    with admin_client(api) as c:
        literal = c.get(f"{ADMIN}/users/search", params={"query": f"_{tag}%"}, headers=h).json()
        assert {u["id"] for u in literal["users"]} == {u["user"]["id"] for u in made} and literal["total"] == 3
        upper = c.get(f"{ADMIN}/users/search", params={"query": f" PCT0X{tag.upper()} "}, headers=h).json()
        assert [u["id"] for u in upper["users"]] == [plain["user"]["id"]]
        page1 = c.get(f"{ADMIN}/users/search", params={"query": tag, "limit": 3}, headers=h).json()
        assert page1["total"] == 4 and len(page1["users"]) == 3 and page1["next_cursor"]
        page2 = c.get(
            f"{ADMIN}/users/search", params={"query": tag, "limit": 3, "cursor": page1["next_cursor"]}, headers=h
        ).json()
        by_offset = c.get(f"{ADMIN}/users/search", params={"query": tag, "limit": 3, "offset": 3}, headers=h).json()
        assert page2["users"] == by_offset["users"] and page2["next_cursor"] is None and page2["total"] == 4
        ids = [u["id"] for u in page1["users"] + page2["users"]]
        assert ids == [plain["user"]["id"], *(u["user"]["id"] for u in reversed(made))]  # newest first
        mixed = c.get(f"{ADMIN}/users", params={"cursor": page1["next_cursor"]}, headers=h)
        assert mixed.status_code == 400 and mixed.json()["details"][0]["field"] == "cursor"
        since = made[0]["user"]["created_at"]
        window = c.get(
            f"{ADMIN}/users",
            params={"created_from": since, "created_to": plain["user"]["created_at"], "kyc_status": "pending"},
            headers=h,
        ).json()
        assert {u["id"] for u in window["users"]} >= {u["user"]["id"] for u in made}
        assert plain["user"]["id"] not in {u["id"] for u in window["users"]}
        admins = c.get(f"{ADMIN}/users", params={"role": "admin", "limit": 100}, headers=h).json()
        assert admin["user"]["id"] in {u["id"] for u in admins["users"]} and admins["total"] >= 1
        assert all(u["role"] == "admin" for u in admins["users"])
        stats = c.get(f"{ADMIN}/stats", headers=h)
        body = stats.json()
        assert stats.status_code == 200 and stats.headers["x-consistency-token"].startswith("c1.")
        assert body["total_users"] == sum(body["users_by_role"].values()) == sum(body["users_by_kyc_status"].values())
        assert body["active_sessions"] >= 5 and body["users_by_role"]["admin"] >= 1
        for params, field in (
            ({"limit": "0"}, "limit"),
            ({"limit": "101"}, "limit"),
            ({"offset": "-1"}, "offset"),
            ({"include_deleted": "yes"}, "include_deleted"),
            ({"kyc_status": "approved"}, "kyc_status"),
            ({"created_from": "2026-03-01T12:00:00"}, "created_from"),
        ):
            r = c.get(f"{ADMIN}/users", params=params, headers=h)
            assert r.status_code == 400 and r.json()["details"][0]["field"] == field, params
        assert c.get(f"{ADMIN}/users/search", headers=h).json()["details"][0]["field"] == "query"


def test_request_validation_on_writes(api: Api, admin: dict[str, Any]) -> None:
    with api.client() as c:
        uid = register(c)["user"]["id"]
    h = bearer(admin)
    with admin_client(api) as c:
        cases = [
            c.patch(f"{ADMIN}/users/not-a-uuid/kyc", json={"status": "verified"}, headers=h),
            c.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "verified", "role": "admin"}, headers=h),
            c.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": None}, headers=h),
            c.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "verified"}, headers={**h, "If-Match": 'W/"1"'}),
            c.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "verified", "reason": "x" * 1001}, headers=h),
            c.post(f"{ADMIN}/users/{uid}/erase", json={}, headers=h),
            c.post(f"{ADMIN}/users/{uid}/erase", json={"reason": "   "}, headers=h),
            c.post(f"{ADMIN}/users/{uid}/restore", json={"reason": 5}, headers=h),
            c.get(f"{ADMIN}/users/{uid}", params={"as_of": "2026-03-01T12:00:00"}, headers=h),
            c.get(f"{ADMIN}/users/{uid}", params={"as_of": "2999-01-01T00:00:00Z"}, headers=h),
            c.get(f"{ADMIN}/users/{uid}", headers={**h, "X-Consistency-Token": "nope"}),
        ]
        assert [r.status_code for r in cases] == [400] * len(cases), [r.text for r in cases]
        fields = [r.json().get("details", [{}])[0].get("field") for r in cases]
        assert fields == [
            "id", "role", "status", "If-Match", "reason", "reason", "reason", "reason", "as_of", "as_of",
            "X-Consistency-Token",
        ]  # fmt: skip
        form = c.post(f"{ADMIN}/users/{uid}/restore", content=b"reason=x", headers={**h, "Content-Type": "text/plain"})
        assert form.status_code == 415 and form.json()["error"] == "unsupported_media_type"
        assert c.get(f"{ADMIN}/users/{uid}", headers=h).json()["version"] == 1  # nothing was written


def test_concurrent_edits_with_the_same_if_match_exactly_one_wins(api: Api, admin: dict[str, Any]) -> None:
    with api.client() as c:
        uid = register(c)["user"]["id"]
    h = bearer(admin)

    def patch(status: str, version: int) -> httpx.Response:
        with admin_client(api) as c:
            return c.patch(
                f"{ADMIN}/users/{uid}/kyc", json={"status": status}, headers={**h, "If-Match": f'"{version}"'}
            )

    version, current = 1, "pending"
    for _ in range(3):
        statuses = [s for s in ("pending", "verified", "rejected") if s != current]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(patch, statuses, [version] * 2))
        assert sorted(r.status_code for r in results) == [200, 412], [r.text for r in results]
        winner = next(r for r in results if r.status_code == 200)
        loser = next(r for r in results if r.status_code == 412)
        version, current = version + 1, winner.json()["kyc_status"]
        assert winner.headers["etag"] == f'"{version}"' and loser.json()["current_version"] == version
    with admin_client(api) as c:
        history = c.get(f"{ADMIN}/users/{uid}/history", params={"type": "user.kyc.updated"}, headers=h).json()
    assert history["total"] == 3


def test_admin_requests_are_in_the_access_log(api: Api, admin: dict[str, Any]) -> None:
    with api.client() as c:
        user = register(c)["user"]
    uid, h = user["id"], bearer(admin)
    ids = {name: f"{name}-{uuid.uuid4().hex}" for name in ("read", "write", "denied")}
    with admin_client(api) as c:
        as_of = {"as_of": user["created_at"]}
        c.get(f"{ADMIN}/users/{uid}", params=as_of, headers={**h, "X-Request-ID": ids["read"]})
        c.get(f"{ADMIN}/users", params={"role": "user", "limit": 5}, headers={**h, "X-Request-ID": ids["read"] + "2"})
        c.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "verified"}, headers={**h, "X-Request-ID": ids["write"]})
        c.get(f"{ADMIN}/stats", headers={"X-Request-ID": ids["denied"]})

        def entries() -> dict[str, Any]:
            found = {}
            for key, request_id in (*ids.items(), ("list", ids["read"] + "2")):
                rows = c.get(f"{ADMIN}/access-log", params={"request_id": request_id}, headers=h).json()["entries"]
                found.update({key: rows[0]} if rows else {})
            return found

        found = wait_for(entries, lambda f: len(f) == 4)
    read, listing, write, denied = found["read"], found["list"], found["write"], found["denied"]
    assert (read["event_type"], read["category"], read["actor_type"], read["listener"]) == (
        "authz_admin",
        "data_access",
        "admin",
        "admin",
    )
    assert read["user_id"] == uid and read["resource_id"] == uid and read["actor_id"] == admin["user"]["id"]
    assert read["route"] == "/api/v1/admin/users/{id}" and read["is_sensitive"] is True
    assert listing["metadata"]["query_parameters"] == ["limit", "role"]
    assert (write["event_type"], write["severity"], write["status"]) == ("authz_change", "high", "success")
    assert write["actor_identifier"] == admin["user"]["email"]
    assert (denied["event_type"], denied["status_code"], denied["actor_type"]) == ("authz_fail", 401, "anonymous")

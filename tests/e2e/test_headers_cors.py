"""Security headers, request ids, HSTS and CORS of the public listener (SPEC §2.3, §2.4, §7.6, §7.7, §7.8).

Most checks run against the shared service (no CORS origins, 127.0.0.1 a trusted proxy). CORS and the
untrusted-peer case use a second service of this module's own: two allowed origins and no trusted proxy.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.e2e.conftest import Api
from tests.e2e.procs import Service, clean_env, free_port
from tests.e2e.test_public_api import bearer, register

ALLOWED = "https://app.example.com"
CSP_API = "default-src 'none'; frame-ancestors 'none'"
CSP_SWAGGER = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
EXPOSED = {
    "etag",
    "retry-after",
    "x-consistency-token",
    "x-idempotency-replay",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-request-id",
}
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def cors_service(
    server_url: str, template_db: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second service: CORS for two origins, and no trusted proxy (127.0.0.1 is an ordinary client)."""
    name = f"pandora_cors_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    workdir: Path = tmp_path_factory.mktemp("cors")
    run = uuid.uuid4().hex[:8]
    env = clean_env(
        APP_ENV="test",
        DATABASE_URL=server_url.rsplit("/", 1)[0] + "/" + name,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=f"cors-{run}:",
        EVENTS_STREAM=f"cors-{run}:events",
        DATA_DIR=str(workdir / "data"),
        CORS_ALLOWED_ORIGINS=f"{ALLOWED},http://localhost:3000",
        ARGON2_MEMORY_KIB="8192",
        ARGON2_PARALLELISM="1",
        DATA_ENCRYPTION_KEY="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        EMAIL_INDEX_KEY="pandora-users test email index pepper",
    )
    service = Service(env, workdir, free_port())
    try:
        service.wait_ready(timeout=60)
        yield service.url
    finally:
        service.stop()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def assert_security_headers(r: httpx.Response, *, swagger: bool = False) -> None:
    h = r.headers
    where = f"{r.request.method} {r.request.url.path} -> {r.status_code}"
    assert h["x-content-type-options"] == "nosniff", where
    assert h["x-frame-options"] == "DENY", where
    assert h["referrer-policy"] == "no-referrer", where
    assert h.get_list("content-security-policy") == [CSP_SWAGGER if swagger else CSP_API], where
    assert "server" not in h and "set-cookie" not in h, where
    assert "strict-transport-security" not in h, where  # plain HTTP, no X-Forwarded-Proto
    assert "access-control-allow-origin" not in h and "access-control-allow-credentials" not in h, where
    assert h["x-request-id"], where
    if r.request.url.path.startswith("/api/"):
        assert h.get_list("cache-control") == ["no-store"] and h["pragma"] == "no-cache", where


def test_security_headers_on_every_kind_of_response(api: Api) -> None:
    with api.client() as c:
        auth = register(c)
        responses = [
            c.get("/api/v1/users/me", headers=bearer(auth)),  # 200
            c.get("/api/v1/users/me/sessions", headers=bearer(auth)),
            c.post("/api/v1/auth/login", json={"email": "nobody@example.com", "password": "x"}),  # 401
            c.post("/api/v1/auth/register", content=b"{", headers={"Content-Type": "application/json"}),  # 400
            c.post("/api/v1/auth/register", content=b"{}", headers={"Content-Type": "text/plain"}),  # 415
            c.post("/api/v1/auth/login", content=b"x" * 70_000, headers={"Content-Type": "application/json"}),  # 413
            c.get("/api/v1/users/me"),  # 401
            c.get("/api/v1/users/me/"),  # 404 at the edge (trailing slash)
            c.get("/api/v1/nope"),  # 404 in the router
            c.request("TRACE", "/api/v1/users/me"),  # 405
            c.get("/api/v1/auth/login"),  # 405
            c.options("/api/v1/users/me", headers={"Access-Control-Request-Method": "GET"}),  # 204 preflight
            c.options("/api/v1/users/me"),
            c.get("/health"),
            c.get("/ready"),
            c.get("/openapi.json"),
            c.get("/.well-known/jwks.json"),
            c.get("/nope"),
            c.request("TRACE", "/health"),
        ]
        swagger = [c.get(path) for path in ("/swagger", "/swagger/index.html", "/swagger/swagger-ui.css")]
        swagger += [c.get("/swagger/initializer.js"), c.get("/swagger/swagger-ui-bundle.js"), c.get("/swagger/nope")]
    for r in responses:
        assert_security_headers(r)
    for r in swagger:
        assert_security_headers(r, swagger=True)
    assert [r.status_code for r in swagger] == [200, 200, 200, 200, 200, 404]
    statuses = [r.status_code for r in responses]
    assert statuses[:13] == [200, 200, 401, 400, 415, 413, 401, 404, 404, 405, 405, 204, 204]
    for r in responses[2:11]:  # the errors are in the one error shape, with no-store too
        assert r.headers["content-type"].startswith("application/json") and "error" in r.json()
    jwks = responses[16]
    assert jwks.headers["cache-control"] == "public, max-age=300"


def test_request_id_is_echoed_when_valid_and_replaced_otherwise(api: Api) -> None:
    kept = ["abc", "A.b-c_9", "x" * 128, str(uuid.uuid4())]
    replaced = ["", "x" * 129, "has space", "semi;colon", "slash/", "ünï", "a\tb", "<script>"]
    with api.client() as c:
        for rid in kept:
            for r in (
                c.get("/health", headers={"X-Request-ID": rid}),
                c.get("/api/v1/nope", headers={"X-Request-ID": rid}),
            ):
                assert r.headers["x-request-id"] == rid
        for rid in replaced:
            r = c.get("/api/v1/users/me", headers=[(b"X-Request-ID", rid.encode())])
            assert r.status_code == 401 and UUID4.match(r.headers["x-request-id"]), rid
        generated = {c.get("/health").headers["x-request-id"] for _ in range(5)}
    assert len(generated) == 5 and all(UUID4.match(g) for g in generated)


def test_hsts_only_over_https_from_a_trusted_proxy(api: Api, cors_service: str) -> None:
    hsts = "max-age=31536000; includeSubDomains"
    with api.client() as c:  # the shared service trusts 127.0.0.1
        for path in ("/health", "/api/v1/users/me", "/api/v1/nope/", "/swagger"):
            assert c.get(path, headers={"X-Forwarded-Proto": "https"}).headers["strict-transport-security"] == hsts
        preflight = c.options("/api/v1/users/me", headers={"X-Forwarded-Proto": "https"})
        assert preflight.headers["strict-transport-security"] == hsts
        for proto in ("http", "", "ftp", "https, http"):
            assert "strict-transport-security" not in c.get("/health", headers={"X-Forwarded-Proto": proto}).headers
        assert "strict-transport-security" not in c.get("/health").headers


def test_forwarded_headers_mean_nothing_from_an_untrusted_peer(cors_service: str) -> None:
    # The second service trusts no proxy, so 127.0.0.1 is the client itself (SPEC §7.8).
    r = httpx.get(f"{cors_service}/health", headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 200 and "strict-transport-security" not in r.headers
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=cors_service, headers=forged) as c:
        email = f"xff-{uuid.uuid4().hex[:10]}@example.com"
        body = {"email": email, "password": "correct horse battery staple", "first_name": "A", "last_name": "B"}
        auth = c.post("/api/v1/auth/register", json=body).json()
        sessions = c.get("/api/v1/users/me/sessions", headers=bearer(auth)).json()["sessions"]
    assert [s["ip_address"] for s in sessions] == ["127.0.0.1"]


def preflight(base: str, path: str, origin: str, method: str = "PATCH") -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, if-match",
    }
    return httpx.options(f"{base}{path}", headers=headers)


def test_preflight_from_an_allowed_origin(cors_service: str) -> None:
    for path in ("/api/v1/users/me", "/api/v1/auth/login", "/api/v1/users/me/sessions/x"):
        r = preflight(cors_service, path, ALLOWED)
        assert r.status_code == 204 and r.content == b""
        h = r.headers
        assert h["access-control-allow-origin"] == ALLOWED and h["vary"] == "Origin"
        assert h["access-control-allow-methods"] == "GET, POST, PUT, PATCH, DELETE"
        assert {v.strip() for v in h["access-control-allow-headers"].split(",")} == {
            "Authorization",
            "Content-Type",
            "Idempotency-Key",
            "If-Match",
            "X-Consistency-Token",
            "X-Request-ID",
            "traceparent",
            "tracestate",
        }
        assert h["access-control-max-age"] == "600"
        assert {v.strip().lower() for v in h["access-control-expose-headers"].split(",")} == EXPOSED
        assert "access-control-allow-credentials" not in h
        assert_security_headers_cors(r)
    assert preflight(cors_service, "/api/v1/users/me", "http://localhost:3000").headers[
        "access-control-allow-origin"
    ] == ("http://localhost:3000")


def assert_security_headers_cors(r: httpx.Response) -> None:
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "server" not in r.headers


OTHER_ORIGINS = [
    "https://evil.example.com",
    "https://app.example.com.evil.com",
    "https://APP.EXAMPLE.COM",
    "http://app.example.com",
    "https://app.example.com:8443",
    "https://app.example.com/",
    "null",
    "*",
    "",
]


@pytest.mark.parametrize("origin", OTHER_ORIGINS)
def test_preflight_from_another_origin_gets_no_cors_headers(cors_service: str, api: Api, origin: str) -> None:
    for base in (cors_service, api.url):  # and the shared service, which allows no origin at all
        r = preflight(base, "/api/v1/users/me", origin)
        assert r.status_code == 204
        assert not [k for k in r.headers if k.startswith("access-control-")], dict(r.headers)


def test_actual_requests_carry_cors_headers_for_an_allowed_origin_only(cors_service: str) -> None:
    with httpx.Client(base_url=cors_service) as c:
        email = f"cors-{uuid.uuid4().hex[:10]}@example.com"
        body = {"email": email, "password": "correct horse battery staple", "first_name": "A", "last_name": "B"}
        created = c.post("/api/v1/auth/register", json=body, headers={"Origin": ALLOWED})
        assert created.status_code == 201
        me = c.get("/api/v1/users/me", headers={**bearer(created.json()), "Origin": ALLOWED})
        denied = c.get("/api/v1/users/me", headers={"Origin": ALLOWED})
        other = c.get("/api/v1/users/me", headers={**bearer(created.json()), "Origin": "https://evil.example.com"})
        health = c.get("/health", headers={"Origin": ALLOWED})
    for r in (created, me, denied, health):
        assert r.headers["access-control-allow-origin"] == ALLOWED and r.headers["vary"] == "Origin"
        assert {v.strip().lower() for v in r.headers["access-control-expose-headers"].split(",")} == EXPOSED
        assert "access-control-allow-credentials" not in r.headers and "set-cookie" not in r.headers
        assert "access-control-allow-methods" not in r.headers  # preflight only
    assert me.status_code == 200 and me.headers["etag"] == '"1"' and denied.status_code == 401
    assert other.status_code == 200 and not [k for k in other.headers if k.startswith("access-control-")]


def test_preflight_needs_no_authentication_and_is_not_rate_limited(cors_service: str) -> None:
    headers = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST"}
    with httpx.Client(base_url=cors_service, headers=headers) as c:  # more than the `ip` limit (100 a minute)
        codes = {c.options("/api/v1/auth/login").status_code for _ in range(110)}
        r = c.get("/api/v1/users/me")
    assert codes == {204}
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"  # preflights used none of the window

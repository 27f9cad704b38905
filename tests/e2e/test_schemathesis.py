"""The public API against its own OpenAPI document, with schemathesis (SPEC §3.4).

Every operation of `/openapi.json` is exercised with schema examples, the coverage phase's boundary and
negative values, undocumented methods, and random (positive and negative) fuzzing. A 5xx, an undocumented
status, a response body, header or content type that does not match the document, schema-invalid input that
is accepted, or a secured operation that answers without a valid token, fails.
Authenticated operations get the access token of a throwaway user, replaced before it could be used up
(per-user rate limit) or after an operation may have ended it. Each request comes from a fresh client IP
(X-Forwarded-For from the trusted proxy), so the per-IP limits never mask a response.
"""

from __future__ import annotations

import itertools
import uuid

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.e2e.conftest import Api
from tests.e2e.test_public_api import register

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,  # schema-invalid input is refused with a 4xx
    ignored_auth,  # a secured operation refuses the same request without, or with a bad, bearer token
    missing_required_header,
    unsupported_method,  # an undocumented method is 405
    allow_header_conformance,
]
MAX_EXAMPLES = 25
TOKEN_USES = 15  # well below the per-user limit (60 a minute)
# A successful call of these ends the caller's session or account.
ENDS_SESSION = {("DELETE", "/api/v1/users/me"), ("POST", "/api/v1/users/me/logout-all")}
_ips = itertools.count(1)


def _ip() -> str:
    n = next(_ips)
    return f"198.18.{(n >> 8) & 255}.{n & 255}"  # a range no other e2e test uses


class Tokens:
    """Access tokens of throwaway users, each used at most TOKEN_USES times."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.token: str | None = None
        self.uses = 0

    def get(self) -> str:
        if self.token is None or self.uses >= TOKEN_USES:
            with self.api.client() as c:
                self.token = register(c, f"st-{uuid.uuid4().hex[:12]}@example.com")["access_token"]
            self.uses = 0
        self.uses += 1
        return self.token

    def after(self, method: str, path: str, status: int) -> None:
        """Forget the token when the call may have ended it (or the caller's account)."""
        if status in (401, 404) or ((method, path) in ENDS_SESSION and status < 300):
            self.token = None


@pytest.fixture(scope="module")
def tokens(api: Api) -> Tokens:
    return Tokens(api)


@pytest.fixture(scope="module")
def public_schema(api: Api) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "seed": 20261127,
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none", "no-shrink": True},
            "phases": {"stateful": {"enabled": False}},
        }
    )
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json", config=config)


@pytest.fixture(autouse=True)
def _pytest9_node_id(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32 renames each operation's subtest through `node._nodeid`, which pytest 9 no longer has.
    request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("public_schema")


@schema.parametrize()
def test_public_api_conforms_to_its_openapi_document(case: schemathesis.Case, tokens: Tokens) -> None:
    # On the case, so that the checks' own probes (ignored_auth) come from this fresh IP too.
    case.headers["X-Forwarded-For"] = _ip()
    headers = {}
    if case.operation.definition.raw.get("security"):
        headers["Authorization"] = f"Bearer {tokens.get()}"
    response = case.call(headers=headers, timeout=30)
    tokens.after(case.method.upper(), case.path, response.status_code)
    case.validate_response(response, checks=CHECKS, headers=headers)


# SPEC §3.1–§3.3: each public operation, whether it takes a bearer token, and its specific error codes.
OPERATIONS: dict[tuple[str, str], tuple[bool, set[str]]] = {
    ("post", "/api/v1/auth/register"): (False, {"weak_password", "user_already_exists", "service_busy"}),
    ("post", "/api/v1/auth/login"): (False, {"invalid_credentials", "account_locked", "service_busy"}),
    ("post", "/api/v1/auth/refresh"): (False, {"invalid_refresh_token"}),
    ("post", "/api/v1/auth/verify-email"): (False, {"invalid_token"}),
    ("post", "/api/v1/auth/verify-email/resend"): (True, set()),
    ("post", "/api/v1/auth/password/forgot"): (False, set()),
    ("post", "/api/v1/auth/password/reset"): (False, {"invalid_token", "weak_password", "service_busy"}),
    ("get", "/api/v1/users/me"): (True, set()),
    ("put", "/api/v1/users/me"): (True, {"version_conflict"}),
    ("patch", "/api/v1/users/me"): (True, {"version_conflict"}),
    ("delete", "/api/v1/users/me"): (True, set()),
    ("post", "/api/v1/users/me/password"): (
        True,
        {"weak_password", "invalid_credentials", "account_locked", "service_busy"},
    ),
    ("patch", "/api/v1/users/me/kyc"): (True, {"invalid_kyc_status", "email_not_verified", "invalid_kyc_transition"}),
    ("get", "/api/v1/users/me/sessions"): (True, set()),
    ("delete", "/api/v1/users/me/sessions/{session_id}"): (True, {"session_not_found"}),
    ("post", "/api/v1/users/me/logout"): (True, {"invalid_refresh_token"}),
    ("post", "/api/v1/users/me/logout-all"): (True, set()),
}
STATUS = {"weak_password": "400", "invalid_token": "400", "invalid_kyc_status": "400", "invalid_request": "400"}
STATUS |= {"unauthorized": "401", "invalid_credentials": "401", "invalid_refresh_token": "401"}
STATUS |= {"email_not_verified": "403", "user_not_found": "404", "session_not_found": "404"}
STATUS |= {"user_already_exists": "409", "invalid_kyc_transition": "409", "version_conflict": "412"}
STATUS |= {"payload_too_large": "413", "unsupported_media_type": "415", "account_locked": "423"}
STATUS |= {"rate_limit_exceeded": "429", "internal_error": "500", "service_busy": "503", "service_unavailable": "503"}


def test_openapi_document_describes_every_public_route_and_its_errors(api: Api) -> None:
    document = httpx.get(f"{api.url}/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    error = document["components"]["schemas"]["ErrorResponse"]
    assert set(error["required"]) == {"error", "message", "code"}
    assert {"details", "trace_id", "retry_after_seconds", "current_version"} <= set(error["properties"])
    found = {(m, p) for p, item in document["paths"].items() for m in item if p.startswith("/api/")}
    assert found == set(OPERATIONS)
    for (method, path), (secured, specific) in OPERATIONS.items():
        operation = document["paths"][path][method]
        assert operation.get("security") == ([{"bearerAuth": []}] if secured else None), (method, path)
        every = {"invalid_request", "rate_limit_exceeded", "internal_error", "service_unavailable"}
        every |= {"unauthorized", "user_not_found"} if secured else set()
        every |= {"payload_too_large", "unsupported_media_type"} if method != "get" else set()
        for code in every | specific:
            response = operation["responses"][STATUS[code]]
            schema = response["content"]["application/json"]["schema"]
            assert schema["allOf"][0] == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, code)
            assert code in schema["allOf"][1]["properties"]["error"]["enum"], (method, path, code)
        assert "Retry-After" in operation["responses"]["429"]["headers"]
        success = next(r for s, r in operation["responses"].items() if s.startswith("2"))
        assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(success["headers"])
    me = document["paths"]["/api/v1/users/me"]
    assert {"ETag", "X-Consistency-Token"} <= set(me["get"]["responses"]["200"]["headers"])
    assert "If-Match" in [p["name"] for p in me["put"]["parameters"]]

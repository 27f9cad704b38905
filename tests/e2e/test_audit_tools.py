"""The auditor's tools over HTTP (SPEC §4.2 history and `?as_of=`, §4.4 events and access log, §9.5 erasure)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.conftest import Api
from tests.e2e.test_admin_api import ADMIN, admin_client, new_admin, wait_for
from tests.e2e.test_public_api import PASSWORD, bearer, register


@pytest.fixture
def admin(api: Api) -> dict[str, Any]:
    return new_admin(api)


def consistent(response: httpx.Response) -> dict[str, str]:
    token = response.headers.get("x-consistency-token")
    return {"X-Consistency-Token": token} if token else {}


def test_as_of_each_step_of_a_life_is_the_state_the_api_returned(api: Api, admin: dict[str, Any]) -> None:
    h = bearer(admin)
    with api.client() as c, admin_client(api) as a:
        auth = register(c)
        uid, user_h = auth["user"]["id"], bearer(auth)
        steps: list[httpx.Response] = []

        def step(response: httpx.Response) -> None:
            assert response.status_code in (200, 201), response.text
            steps.append(a.get(f"{ADMIN}/users/{uid}", headers={**h, **consistent(response)}))

        step(c.get("/api/v1/users/me", headers=user_h))
        step(c.put("/api/v1/users/me", json={"first_name": "Ann-Marie", "last_name": "Lee"}, headers=user_h))
        step(a.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "rejected", "reason": "blurry scan"}, headers=h))
        step(c.patch("/api/v1/users/me/kyc", json={"status": "pending"}, headers=user_h))
        step(a.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "verified", "reason": "new scan ok"}, headers=h))
        step(a.put(f"{ADMIN}/users/{uid}/role", json={"role": "admin", "reason": "joins support"}, headers=h))
        step(a.request("DELETE", f"{ADMIN}/users/{uid}", json={"reason": "left the company"}, headers=h))
        step(a.post(f"{ADMIN}/users/{uid}/restore", json={"reason": "came back"}, headers=h))
        states = [s.json() for s in steps]
        assert [s["version"] for s in states] == [1, 2, 3, 4, 5, 6, 7, 8]
        assert [s["kyc_status"] for s in states] == ["pending"] * 2 + ["rejected", "pending"] + ["verified"] * 4
        for state in states:
            then = a.get(f"{ADMIN}/users/{uid}", params={"as_of": state["updated_at"]}, headers=h)
            assert then.status_code == 200 and "etag" not in then.headers
            body = then.json()
            assert body.pop("as_of") == state["updated_at"] and body == state
        moment = datetime.fromisoformat(states[2]["updated_at"].replace("Z", "+00:00"))
        offset = (moment + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%f+02:00")
        shifted = a.get(f"{ADMIN}/users/{uid}", params={"as_of": offset}, headers=h).json()
        assert shifted["version"] == 3 and shifted["as_of"] == states[2]["updated_at"]
        before = (moment - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert a.get(f"{ADMIN}/users/{uid}", params={"as_of": before}, headers=h).json()["error"] == "user_not_found"
        unknown = a.get(f"{ADMIN}/users/{uuid.uuid4()}", params={"as_of": states[0]["updated_at"]}, headers=h)
        assert unknown.status_code == 404
        history = a.get(f"{ADMIN}/users/{uid}/history", params={"order": "asc", "limit": 100}, headers=h).json()
    events = [
        (e["event_type"], e["metadata"].get("actor_role"), e["metadata"].get("reason")) for e in history["events"]
    ]
    assert events == [
        ("user.registered", "user", None),
        ("user.logged_in", "user", None),
        ("user.email_verification.requested", "user", None),
        ("user.profile.updated", "user", None),
        ("user.kyc.updated", "admin", "blurry scan"),
        ("user.kyc.updated", "user", None),
        ("user.kyc.updated", "admin", "new scan ok"),
        ("user.role.changed", "admin", "joins support"),
        ("user.session.revoked", "admin", "joins support"),
        ("user.deleted", "admin", "left the company"),
        ("user.restored", "admin", "came back"),
    ]
    assert history["total"] == 11 and history["next_cursor"] is None
    actors = {e["metadata"].get("actor_id") for e in history["events"][4:]}
    assert actors == {admin["user"]["id"], uid}
    assert history["events"][8]["payload"]["reason"] == "role_changed"


def test_history_order_type_filter_and_pages(api: Api, admin: dict[str, Any]) -> None:
    h = bearer(admin)
    with api.client() as c:
        auth = register(c)
        c.post("/api/v1/auth/login", json={"email": auth["user"]["email"], "password": PASSWORD})
    uid = auth["user"]["id"]
    with admin_client(api) as a:
        newest = a.get(f"{ADMIN}/users/{uid}/history", params={"limit": 2}, headers=h).json()
        assert [e["event_type"] for e in newest["events"]] == ["user.logged_in", "user.email_verification.requested"]
        assert newest["total"] == 4 and newest["next_cursor"]
        rest = a.get(f"{ADMIN}/users/{uid}/history", params={"limit": 2, "cursor": newest["next_cursor"]}, headers=h)
        assert [e["event_type"] for e in rest.json()["events"]] == ["user.logged_in", "user.registered"]
        positions = [e["position"] for e in newest["events"] + rest.json()["events"]]
        assert positions == sorted(positions, reverse=True)
        logins = a.get(f"{ADMIN}/users/{uid}/history", params={"type": "user.logged_in"}, headers=h).json()
        assert logins["total"] == 2 and {e["payload"]["ip_address"] for e in logins["events"]} != {"[erased]"}
        assert all("token" not in e["payload"] and "link" not in e["payload"] for e in newest["events"])
        bad = a.get(f"{ADMIN}/users/{uid}/history", params={"type": "user.bogus"}, headers=h)
        assert bad.status_code == 400 and bad.json()["details"][0]["field"] == "type"
        assert a.get(f"{ADMIN}/users/{uid}/history", params={"order": "up"}, headers=h).status_code == 400
        missing = a.get(f"{ADMIN}/users/{uuid.uuid4()}/history", headers=h)
        assert missing.status_code == 404 and missing.json()["error"] == "user_not_found"


def stream_of(api: Api, user_id: str) -> list[str]:
    client = redis.Redis.from_url(api.redis_url)
    entries = client.xrange(api.stream)
    return [e[1][b"event_type"].decode() for e in entries if e[1][b"user_id"].decode() == user_id]


def test_erase_shreds_personal_data_everywhere_but_keeps_the_trail(api: Api, admin: dict[str, Any]) -> None:
    h = bearer(admin)
    with api.client() as c:
        auth = register(c)
        c.post("/api/v1/auth/login", json={"email": auth["user"]["email"], "password": PASSWORD})
    uid, email = auth["user"]["id"], auth["user"]["email"]
    with admin_client(api) as a:
        a.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "verified", "reason": "passport"}, headers=h)

        def own_rows() -> list[dict[str, Any]]:
            rows = a.get(f"{ADMIN}/access-log", params={"user_id": uid}, headers=h).json()["entries"]
            return [r for r in rows if r["listener"] == "public"]

        assert len(wait_for(own_rows, lambda rows: len(rows) >= 2)) == 2  # flushed before the erasure
        erased = a.post(
            f"{ADMIN}/users/{uid}/erase", json={"reason": "GDPR request #42"}, headers={**h, "If-Match": '"2"'}
        )
        assert erased.status_code == 200 and erased.json() == {"message": "user erased", "user_id": uid}
        history = a.get(f"{ADMIN}/users/{uid}/history", params={"order": "asc"}, headers=h).json()
        got = a.get(f"{ADMIN}/users/{uid}", headers=h).json()
        listed = a.get(f"{ADMIN}/users", params={"include_deleted": "true", "limit": 100}, headers=h).json()["users"]
        found = a.get(f"{ADMIN}/users/search", params={"query": email, "include_deleted": "true"}, headers=h).json()
        rows = own_rows()
        again = a.post(f"{ADMIN}/users/{uid}/erase", json={"reason": "again"}, headers=h)
        restore = a.post(f"{ADMIN}/users/{uid}/restore", headers=h)
    types = [e["event_type"] for e in history["events"]]
    assert types[:4] == ["user.registered", "user.logged_in", "user.email_verification.requested", "user.logged_in"]
    assert types[-4:-2] == ["user.kyc.updated", "user.session.revoked"] and types[-1] == "user.erased"
    registered, logged_in = history["events"][0], history["events"][1]
    assert {registered["payload"][k] for k in ("email", "first_name", "last_name")} == {"[erased]"}
    assert logged_in["payload"]["ip_address"] == "[erased]" and logged_in["metadata"]["user_agent"] == "[erased]"
    kyc = history["events"][-4]
    assert (kyc["payload"]["old_status"], kyc["payload"]["kyc_status"], kyc["metadata"]["reason"]) == (
        "pending",
        "verified",
        "passport",
    )
    assert history["events"][-1]["metadata"]["reason"] == "GDPR request #42"
    assert (got["email"], got["first_name"], got["last_name"], got["is_active"]) == ("[erased]",) * 3 + (False,)
    assert got["erased_at"] and next(u for u in listed if u["id"] == uid)["email"] == "[erased]"
    assert found["total"] == 0
    assert rows and all(
        (r["actor_identifier"], r["ip_address"], r["user_agent"]) == ("[erased]", None, None) for r in rows
    )
    assert again.status_code == 200 and restore.json()["error"] == "user_erased" and restore.status_code == 409
    assert wait_for(lambda: stream_of(api, uid), lambda t: t == ["user.erased"]) == ["user.erased"]
    with api.client() as c:
        gone = c.get("/api/v1/users/me", headers=bearer(auth))
        reborn = register(c, email)
    assert gone.status_code == 404 and gone.json()["error"] == "user_not_found"
    assert reborn["user"]["id"] != uid


def test_global_event_log_filters_and_tailing(api: Api, admin: dict[str, Any]) -> None:
    h = bearer(admin)
    with admin_client(api) as a:
        head = a.get(f"{ADMIN}/events", params={"limit": 1}, headers=h).json()["head_position"]
        with api.client() as c:
            uid = register(c)["user"]["id"]
        kyc = a.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "rejected"}, headers=h)
        after = a.get(
            f"{ADMIN}/events", params={"after_position": head, "limit": 100}, headers={**h, **consistent(kyc)}
        )
        log = after.json()
        positions = [e["position"] for e in log["events"]]
        assert positions == sorted(positions) and positions[0] > head and log["next_after_position"] == positions[-1]
        mine = [e for e in log["events"] if e["user_id"] == uid]
        assert [e["event_type"] for e in mine][-1] == "user.kyc.updated" and log["head_position"] >= positions[-1]
        kyc_event = mine[-1]
        by_user = a.get(f"{ADMIN}/events", params={"after_position": head, "user_id": uid}, headers=h).json()
        assert by_user["events"] == mine
        typed = {"after_position": head, "type": "user.kyc.updated,user.role.changed", "actor_id": admin["user"]["id"]}
        assert a.get(f"{ADMIN}/events", params=typed, headers=h).json()["events"] == [kyc_event]
        stamp = kyc_event["timestamp"]
        since = a.get(f"{ADMIN}/events", params={"after_position": head, "from": stamp}, headers=h).json()
        until = a.get(f"{ADMIN}/events", params={"after_position": head, "to": stamp, "user_id": uid}, headers=h).json()
        assert kyc_event in since["events"] and kyc_event not in until["events"] and until["events"]
        tail = a.get(f"{ADMIN}/events", params={"after_position": log["head_position"]}, headers=h).json()
        assert tail["events"] == [] and tail["next_after_position"] is None
        for params, field in (
            ({"after_position": "-1"}, "after_position"),
            ({"limit": "101"}, "limit"),
            ({"type": "user.nope"}, "type"),
            ({"user_id": "123"}, "user_id"),
            ({"from": "yesterday"}, "from"),
        ):
            r = a.get(f"{ADMIN}/events", params=params, headers=h)
            assert r.status_code == 400 and r.json()["details"][0]["field"] == field, params


def test_access_log_query_filters_and_pages(api: Api, admin: dict[str, Any]) -> None:
    h = bearer(admin)
    ip = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    with api.client(ip) as c:
        email = register(c)["user"]["email"]
        for _ in range(3):
            c.post("/api/v1/auth/login", json={"email": email, "password": "wrong password!"})
    with admin_client(api) as a:
        query = {"ip_address": ip, "limit": 2}
        page = wait_for(lambda: a.get(f"{ADMIN}/access-log", params=query, headers=h).json(), lambda p: p["total"] >= 4)
        assert page["total"] == 4 and len(page["entries"]) == 2 and page["next_cursor"]
        rest = a.get(f"{ADMIN}/access-log", params={**query, "cursor": page["next_cursor"]}, headers=h).json()
        entries = page["entries"] + rest["entries"]
        assert [e["event_type"] for e in entries] == [
            "authn_login_fail_max",
            "authn_login_fail",
            "authn_login_fail",
            "user_created",
        ]
        times = [e["created_at"] for e in entries]
        assert times == sorted(times, reverse=True) and rest["next_cursor"] is None
        high = a.get(f"{ADMIN}/access-log", params={"ip_address": ip, "severity": "high"}, headers=h).json()
        assert [e["event_type"] for e in high["entries"]] == ["authn_login_fail_max"]
        failures = {
            "ip_address": ip,
            "status": "failure",
            "category": "authentication",
            "event_type": "authn_login_fail",
        }
        assert a.get(f"{ADMIN}/access-log", params=failures, headers=h).json()["total"] == 2
        window = {"ip_address": ip, "from": entries[2]["created_at"], "to": entries[0]["created_at"]}
        assert [e["id"] for e in a.get(f"{ADMIN}/access-log", params=window, headers=h).json()["entries"]] == [
            entries[1]["id"],
            entries[2]["id"],
        ]
        first = entries[-1]
        assert (first["listener"], first["method"], first["route"], first["status_code"]) == (
            "public",
            "POST",
            "/api/v1/auth/register",
            201,
        )
        assert first["user_agent"] == "e2e-tests" and first["retention_until"] > first["created_at"]
        for params, field in (
            ({"severity": "urgent"}, "severity"),
            ({"category": "misc"}, "category"),
            ({"status": "ok"}, "status"),
            ({"ip_address": "999.1.1.1"}, "ip_address"),
            ({"user_id": "x"}, "user_id"),
            ({"to": "2026-01-01"}, "to"),
        ):
            r = a.get(f"{ADMIN}/access-log", params=params, headers=h)
            assert r.status_code == 400 and r.json()["details"][0]["field"] == field, params

"""The auditor's command line against the running service's database (SPEC §11 history, events, erase)."""

from __future__ import annotations

import concurrent.futures
import json
import queue
import signal
import subprocess
import threading
import time
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import Api
from tests.e2e.procs import EXE, run_cli
from tests.e2e.test_admin_api import ADMIN, admin_client, new_admin
from tests.e2e.test_public_api import PASSWORD, bearer, register


def cli(api: Api, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=api.env, cwd=api.service.log.parent, stdin=stdin)


def in_parallel(api: Api, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Each CLI run starts a process (a few seconds): independent ones run side by side."""
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: cli(api, *args), commands))


@pytest.fixture(scope="module")
def life(api: Api) -> dict[str, Any]:
    """A user with a short history (KYC changes with a reason) and the admin API's view of it."""
    admin = new_admin(api)
    with api.client() as c:
        auth = register(c)
        c.post("/api/v1/auth/login", json={"email": auth["user"]["email"], "password": PASSWORD})
    uid, h = auth["user"]["id"], bearer(admin)
    with admin_client(api) as a:
        a.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "rejected", "reason": "expired ID card"}, headers=h)
        history = a.get(f"{ADMIN}/users/{uid}/history", params={"order": "asc"}, headers=h).json()
    return {"auth": auth, "admin": admin, "history": history["events"]}


def test_history_table_json_lines_order_limit_and_errors(api: Api, life: dict[str, Any]) -> None:
    uid = life["auth"]["user"]["id"]
    table, lines, unknown = in_parallel(
        api,
        ("history", uid),
        ("history", uid, "--json", "--order", "desc", "--limit", "2"),
        ("history", str(uuid.uuid4()), "--json"),
    )
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].split() == ["POSITION", "TIME", "TYPE", "ACTOR", "SUMMARY"]
    expected = life["history"]
    assert [row.split()[2] for row in rows[1:]] == [e["event_type"] for e in expected]
    assert rows[0].index("TYPE") == rows[1].index("user.registered")  # aligned columns
    kyc = rows[-1]
    assert kyc.split()[:4] == [
        str(expected[-1]["position"]),
        expected[-1]["timestamp"],
        "user.kyc.updated",
        life["admin"]["user"]["id"],
    ]
    assert "kyc_status=rejected" in kyc and "old_status=pending" in kyc and "reason='expired ID card'" in kyc
    assert lines.returncode == 0, lines.stderr
    assert [json.loads(line) for line in lines.stdout.splitlines()] == expected[::-1][:2]
    assert unknown.returncode == 6
    assert json.loads(unknown.stderr) == {
        "error": "user_not_found",
        "message": "user not found",
        "code": "USER_NOT_FOUND",
    }


def test_events_after_limit_type_and_json(api: Api, life: dict[str, Any]) -> None:
    expected = life["history"]
    start = expected[0]["position"] - 1
    uid = life["auth"]["user"]["id"]
    listed, typed_table, bad_type = in_parallel(
        api,
        ("events", "--after", str(start), "--limit", "3", "--json"),
        ("events", "--after", str(start), "--type", "user.kyc.updated,user.registered"),
        ("events", "--type", "user.nope", "--json"),
    )
    assert listed.returncode == 0, listed.stderr
    got = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [e["position"] for e in got] == sorted(e["position"] for e in got) and len(got) == 3
    assert got[0] == expected[0]  # the same EventDTO as the admin API, read from the event store
    header, *rows = typed_table.stdout.splitlines()
    assert header.split() == ["POSITION", "TIME", "TYPE", "USER", "ACTOR", "SUMMARY"]
    assert {row.split()[2] for row in rows} <= {"user.kyc.updated", "user.registered"}
    mine = [row.split()[:4] for row in rows if row.split()[3] == uid]
    wanted = [e for e in expected if e["event_type"] in ("user.kyc.updated", "user.registered")]
    assert mine == [[str(e["position"]), e["timestamp"], e["event_type"], uid] for e in wanted]
    assert header.index("USER") == rows[0].index(rows[0].split()[3])  # aligned columns
    assert bad_type.returncode == 2  # a usage error, reported in the --json error shape
    assert json.loads(bad_type.stderr) == {
        "error": "invalid_request",
        "message": "unknown event type: user.nope",
        "code": "INVALID_REQUEST",
    }


def test_events_follow_prints_new_events_until_interrupted(api: Api, life: dict[str, Any]) -> None:
    head = life["history"][-1]["position"]
    proc = subprocess.Popen(
        [EXE, "events", "--after", str(head), "--follow", "--json", "--type", "user.kyc.updated"],
        env=api.env,
        cwd=api.service.log.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True)
    reader.start()
    try:
        uid, h = life["auth"]["user"]["id"], bearer(life["admin"])
        with admin_client(api) as a:
            r = a.patch(f"{ADMIN}/users/{uid}/kyc", json={"status": "verified", "reason": "renewed"}, headers=h)
        assert r.status_code == 200
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(e["user_id"] == uid for e in seen):
            try:
                seen.append(json.loads(lines.get(timeout=1)))
            except queue.Empty:
                continue
        event = next(e for e in seen if e["user_id"] == uid)
        assert (event["payload"]["kyc_status"], event["metadata"]["reason"]) == ("verified", "renewed")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(20)
    assert code == 0


def test_erase_asks_for_the_user_id_and_follows_the_exit_codes(api: Api) -> None:
    with api.client() as c:
        asked, told = register(c), register(c)
    uid, other = asked["user"]["id"], told["user"]["id"]
    declined, yes = in_parallel(
        api,
        ("erase", uid, "--reason", "GDPR request"),  # empty stdin: no confirmation
        ("erase", other, "--reason", "GDPR request #7", "--yes"),
    )
    assert (declined.returncode, declined.stderr.strip()) == (2, "error: confirmation declined")
    assert (yes.returncode, yes.stdout.strip()) == (0, f"user erased: {other}"), yes.stderr
    with api.client() as c:
        assert c.get("/api/v1/users/me", headers=bearer(asked)).status_code == 200  # nothing happened to it
        gone = c.get("/api/v1/users/me", headers=bearer(told))  # its session ended with the erasure
        assert gone.status_code == 404 and gone.json()["error"] == "user_not_found"
        register(c, told["user"]["email"])  # the email is free again
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        typed, again, unknown = pool.map(
            lambda args: cli(api, *args[0], stdin=args[1]),
            [
                (("erase", uid, "--reason", "GDPR request"), uid.upper() + "\n"),
                (("erase", other, "--reason", "again", "--yes"), ""),
                (("erase", str(uuid.uuid4()), "--reason", "GDPR request", "--yes"), ""),
            ],
        )
    assert typed.returncode == 0 and typed.stdout.strip().endswith(f"user erased: {uid}"), typed.stderr
    assert (again.returncode, again.stdout.strip()) == (0, "user already erased")
    assert (unknown.returncode, unknown.stderr.strip()) == (6, "error: user not found")
    admin = new_admin(api)
    with admin_client(api) as a:
        erased = a.get(f"{ADMIN}/users/{other}/history", params={"type": "user.erased"}, headers=bearer(admin)).json()
    (event,) = erased["events"]
    assert event["metadata"] == {"actor_id": "cli", "actor_role": "admin", "reason": "GDPR request #7"}

"""The gRPC API (SPEC §5) over a real TCP port with the official grpcio client, against the real service.

Health and reflection are called with grpcio's generic call API and grpclib's message classes: the grpcio
and grpclib packages register the same `grpc.health.v1` descriptors, which cannot share one process.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
import pytest
import redis
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest, ServerReflectionResponse

from rpc.gen import user_pb2 as pb
from rpc.gen.user_pb2_grpc import UserServiceStub
from tests.e2e.conftest import KYC_TOKEN, SERVICE_TOKEN, Api
from tests.e2e.procs import health_check
from tests.e2e.test_public_api import PASSWORD, bearer

WALLET = (("authorization", f"Bearer {SERVICE_TOKEN}"),)
KYC = (("authorization", f"bearer {KYC_TOKEN}"),)


@pytest.fixture(scope="module")
def channel(api: Api) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(api.grpc_target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> UserServiceStub:
    return UserServiceStub(channel)


def signup(api: Api) -> tuple[dict[str, Any], str]:
    """A new user (AuthResponse) and the X-Consistency-Token of its registration."""
    email = f"grpc-{uuid.uuid4().hex[:10]}@example.com"
    with api.client() as c:
        r = c.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "first_name": "Gia", "last_name": "Rp"}
        )
    assert r.status_code == 201, r.text
    return r.json(), r.headers["x-consistency-token"]


def fails(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def access_log(api: Api, query: str, params: tuple[Any, ...], *, want: int) -> list[tuple[Any, ...]]:
    """Rows of an access-log query once it has `want` of them (entries are flushed within about 1 s)."""
    deadline = time.monotonic() + 5
    while True:
        with psycopg.connect(api.database_url) as conn:
            rows = conn.execute(query, params).fetchall()  # type: ignore[arg-type]
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def error_code(err: grpc.RpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("x-error-code")


def test_get_user_and_its_errors(api: Api, stub: UserServiceStub) -> None:
    auth, token = signup(api)
    user = auth["user"]
    md = (*WALLET, ("x-consistency-token", token))
    got = stub.GetUser(pb.GetUserRequest(user_id=user["id"].upper()), metadata=md, timeout=10).user
    assert (got.id, got.email, got.first_name, got.last_name) == (user["id"], user["email"], "Gia", "Rp")
    assert (got.kyc_status, got.role, got.HasField("deleted_at")) == ("pending", "user", False)
    assert got.created_at.ToJsonString().startswith(user["created_at"][:19])
    bad = fails(stub.GetUser, pb.GetUserRequest(user_id="not-a-uuid"), metadata=WALLET, timeout=10)
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.details().startswith("invalid user ID format")
    assert error_code(bad) == "INVALID_REQUEST"
    missing = fails(stub.GetUser, pb.GetUserRequest(user_id=str(uuid.uuid4())), metadata=WALLET, timeout=10)
    assert missing.code() == grpc.StatusCode.NOT_FOUND and missing.details() == "user not found"
    assert error_code(missing) == "USER_NOT_FOUND"


def test_service_tokens_and_allow_lists(api: Api, stub: UserServiceStub) -> None:
    request = pb.ValidateUserRequest(user_id=str(uuid.uuid4()))
    for metadata in (
        (),
        (("authorization", "Bearer wrong-token-0123456789abcdef0123456789"),),
        (("authorization", SERVICE_TOKEN),),
    ):
        err = fails(stub.ValidateUser, request, metadata=metadata, timeout=10)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert err.details() == "missing or invalid service token" and error_code(err) == "UNAUTHORIZED"
    denied = fails(stub.ValidateUser, request, metadata=KYC, timeout=10)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and error_code(denied) == "FORBIDDEN"
    allowed = fails(stub.GetUser, pb.GetUserRequest(user_id=request.user_id), metadata=KYC, timeout=10)
    assert allowed.code() == grpc.StatusCode.NOT_FOUND  # GetUser is on the kyc-adapter's list
    rows = access_log(
        api,
        "SELECT event_type, severity, status, status_code, actor_type, actor_identifier FROM access_log"
        " WHERE listener = 'grpc' AND route = '/pandora.user.v1.UserService/ValidateUser'"
        " AND status_code IN (7, 16) ORDER BY created_at",
        (),
        want=4,
    )
    assert ("authz_fail", "high", "failure", 7, "service", "kyc-adapter") in rows
    assert ("authz_fail", "warning", "failure", 16, "anonymous", "anonymous") in rows


def test_get_user_by_email(api: Api, stub: UserServiceStub) -> None:
    auth, token = signup(api)
    md = (*WALLET, ("x-consistency-token", token))
    email = f"  {auth['user']['email'].upper()} "
    assert (
        stub.GetUserByEmail(pb.GetUserByEmailRequest(email=email), metadata=md, timeout=10).user.id
        == auth["user"]["id"]
    )
    empty = fails(stub.GetUserByEmail, pb.GetUserByEmailRequest(email="  "), metadata=WALLET, timeout=10)
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT and empty.details() == "email is required"
    for unknown in ("nobody-here@example.com", "no%body@example.com", "not an email"):
        err = fails(stub.GetUserByEmail, pb.GetUserByEmailRequest(email=unknown), metadata=WALLET, timeout=10)
        assert err.code() == grpc.StatusCode.NOT_FOUND


def test_validate_user_live_deleted_unknown(api: Api, stub: UserServiceStub) -> None:
    auth, token = signup(api)
    request = pb.ValidateUserRequest(user_id=auth["user"]["id"])
    live = stub.ValidateUser(request, metadata=(*WALLET, ("x-consistency-token", token)), timeout=10)
    assert (live.is_valid, live.is_active, live.kyc_status) == (True, True, "pending")
    with api.client() as c:
        r = c.delete("/api/v1/users/me", headers=bearer(auth))
    assert r.status_code == 200
    md = (*WALLET, ("x-consistency-token", r.headers["x-consistency-token"]))
    deleted = stub.ValidateUser(request, metadata=md, timeout=10)
    assert (deleted.is_valid, deleted.is_active, deleted.kyc_status) == (True, False, "pending")
    assert (
        fails(stub.GetUser, pb.GetUserRequest(user_id=request.user_id), metadata=md).code() == grpc.StatusCode.NOT_FOUND
    )
    unknown = stub.ValidateUser(pb.ValidateUserRequest(user_id=str(uuid.uuid4())), metadata=WALLET, timeout=10)
    assert (unknown.is_valid, unknown.is_active, unknown.kyc_status) == (False, False, "")
    bad = fails(stub.ValidateUser, pb.ValidateUserRequest(user_id="123"), metadata=WALLET, timeout=10)
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_list_users(api: Api, stub: UserServiceStub) -> None:
    _, token = signup(api)
    md = (*WALLET, ("x-consistency-token", token))
    page = stub.ListUsers(pb.ListUsersRequest(), metadata=md, timeout=10)
    with psycopg.connect(api.database_url) as conn:
        (live,) = conn.execute("SELECT count(*) FROM users WHERE deleted_at IS NULL AND erased_at IS NULL").fetchone()
    assert page.total == live and len(page.users) == min(10, live)
    created = [u.created_at.ToDatetime() for u in page.users]
    assert created == sorted(created, reverse=True)
    assert len(stub.ListUsers(pb.ListUsersRequest(limit=2, offset=1), metadata=md, timeout=10).users) == 2
    for request, message in (
        (pb.ListUsersRequest(limit=101), "limit cannot exceed 100"),
        (pb.ListUsersRequest(offset=-1), "offset must be non-negative"),
    ):
        err = fails(stub.ListUsers, request, metadata=WALLET, timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details() == message


def _stream_entry(api: Api, user_id: str, event_type: str) -> dict[str, str]:
    client = redis.Redis.from_url(api.redis_url, decode_responses=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for _, fields in client.xrange(api.stream):
            if fields["user_id"] == user_id and fields["event_type"] == event_type:
                return fields
        time.sleep(0.1)
    raise AssertionError(f"{event_type} of {user_id} not in the stream")


def test_update_kyc_status_reaches_the_stream_and_the_user(api: Api, stub: UserServiceStub) -> None:
    auth, _ = signup(api)
    user_id = auth["user"]["id"]
    request = pb.UpdateKYCRequest(user_id=user_id, kyc_status="verified", updated_by="officer-42")
    md = (
        *KYC,
        ("x-reason", "documents checked"),
        ("idempotency-key", f"kyc-{user_id}"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    )
    response, call = stub.UpdateKYCStatus.with_call(request, metadata=md, timeout=10)
    assert response.user.kyc_status == "verified" and response.user.id == user_id
    token = dict(call.initial_metadata())["x-consistency-token"]
    # The caller's own reads wait for its write; the user sees it with the token passed on.
    assert stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=KYC, timeout=10).user.kyc_status == "verified"
    with api.client() as c:
        me = c.get("/api/v1/users/me", headers={**bearer(auth), "X-Consistency-Token": token})
    assert me.status_code == 200 and me.json()["kyc_status"] == "verified"
    entry = _stream_entry(api, user_id, "user.kyc.updated")
    assert json.loads(entry["payload"]) == {
        "email": auth["user"]["email"],
        "kyc_status": "verified",
        "old_status": "pending",
    }
    metadata = json.loads(entry["metadata"])
    assert metadata["actor_id"] == "service:kyc-adapter" and metadata["actor_role"] == "service"
    assert (metadata["service"], metadata["on_behalf_of"], metadata["reason"]) == (
        "kyc-adapter",
        "officer-42",
        "documents checked",
    )
    assert metadata["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and metadata["traceparent"].startswith("00-4bf9")
    replay, again = stub.UpdateKYCStatus.with_call(request, metadata=md, timeout=10)
    assert replay == response and dict(again.initial_metadata())["x-idempotency-replay"] == "true"
    assert dict(again.initial_metadata())["x-consistency-token"] == token
    reused = fails(
        stub.UpdateKYCStatus, pb.UpdateKYCRequest(user_id=user_id, kyc_status="rejected"), metadata=md, timeout=10
    )
    assert reused.code() == grpc.StatusCode.INVALID_ARGUMENT and error_code(reused) == "IDEMPOTENCY_KEY_REUSED"
    same, same_call = stub.UpdateKYCStatus.with_call(request, metadata=KYC, timeout=10)  # no change: no event
    assert same.user.kyc_status == "verified" and "x-consistency-token" not in dict(same_call.initial_metadata())
    with psycopg.connect(api.database_url) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM event_log WHERE user_id = %s AND event_type = 'user.kyc.updated'", (user_id,)
        ).fetchone()
    audited = access_log(
        api,
        "SELECT event_type, actor_id, user_id::text FROM access_log"
        " WHERE route LIKE '%%UpdateKYCStatus' AND user_id = %s",
        (user_id,),
        want=4,
    )
    assert n == 1 and ("authz_change", "service:kyc-adapter", user_id) in audited


def test_update_kyc_status_errors(stub: UserServiceStub) -> None:
    cases = [
        (
            pb.UpdateKYCRequest(user_id="nope", kyc_status="verified"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
        ),
        (
            pb.UpdateKYCRequest(user_id=str(uuid.uuid4()), kyc_status="approved"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_KYC_STATUS",
        ),
        (
            pb.UpdateKYCRequest(user_id=str(uuid.uuid4()), kyc_status="verified"),
            grpc.StatusCode.NOT_FOUND,
            "USER_NOT_FOUND",
        ),
    ]
    for request, status, code in cases:
        err = fails(stub.UpdateKYCStatus, request, metadata=WALLET, timeout=10)
        assert (err.code(), error_code(err)) == (status, code)
    assert fails(stub.UpdateKYCStatus, cases[1][0], metadata=WALLET).details() == "invalid KYC status"


def test_get_user_history(api: Api, stub: UserServiceStub) -> None:
    auth, token = signup(api)
    user_id = auth["user"]["id"]
    md = (*WALLET, ("x-consistency-token", token))
    events = list(stub.GetUserHistory(pb.GetUserHistoryRequest(user_id=user_id), metadata=md, timeout=10))
    types = [e.event_type for e in events]
    assert types == ["user.registered", "user.logged_in", "user.email_verification.requested"]
    assert [e.position for e in events] == sorted(e.position for e in events)
    link = json.loads(events[2].payload)
    assert "token" not in link and "link" not in link and link["email"] == auth["user"]["email"]
    newest = list(
        stub.GetUserHistory(pb.GetUserHistoryRequest(user_id=user_id, newest_first=True, limit=2), metadata=md)
    )
    assert [e.event_type for e in newest] == types[::-1][:2]
    only = list(
        stub.GetUserHistory(pb.GetUserHistoryRequest(user_id=user_id, event_types=["user.logged_in"]), metadata=md)
    )
    assert [e.event_type for e in only] == ["user.logged_in"] and only[0].metadata["actor_role"] == "user"
    after = list(
        stub.GetUserHistory(pb.GetUserHistoryRequest(user_id=user_id, after_position=events[0].position), metadata=md)
    )
    assert [e.position for e in after] == [e.position for e in events[1:]]
    bad = [
        pb.GetUserHistoryRequest(user_id=user_id, event_types=["user.nope"]),
        pb.GetUserHistoryRequest(user_id=user_id, limit=-1),
        pb.GetUserHistoryRequest(user_id="x"),
    ]
    for request in bad:
        assert (
            fails(lambda r: list(stub.GetUserHistory(r, metadata=WALLET)), request).code()
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    unknown = fails(
        lambda: list(stub.GetUserHistory(pb.GetUserHistoryRequest(user_id=str(uuid.uuid4())), metadata=WALLET))
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


def test_introspect_token(api: Api, stub: UserServiceStub) -> None:
    auth, token = signup(api)
    md = (*WALLET, ("x-consistency-token", token))
    ok = stub.IntrospectToken(pb.IntrospectTokenRequest(token=auth["access_token"]), metadata=md, timeout=10)
    assert ok.active and not ok.inactive_reason and ok.kyc_status == "pending"
    assert (ok.user_id, ok.session_id, ok.email, ok.role, ok.audience) == (
        auth["user"]["id"],
        auth["session_id"],
        auth["user"]["email"],
        "user",
        "pandora-api",
    )
    assert ok.expires_at.seconds - ok.issued_at.seconds == 900 and ok.jti
    cases = [
        (pb.IntrospectTokenRequest(token=auth["access_token"], expected_audience="pandora-admin"), "wrong_audience"),
        (pb.IntrospectTokenRequest(token="not.a.jwt"), "malformed"),
    ]
    for request, reason in cases:
        answer = stub.IntrospectToken(request, metadata=WALLET, timeout=10)
        assert (answer.active, answer.inactive_reason) == (False, reason)
    with api.client() as c:
        assert c.post("/api/v1/users/me/logout-all", headers=bearer(auth)).status_code == 200
    revoked = stub.IntrospectToken(pb.IntrospectTokenRequest(token=auth["access_token"]), metadata=WALLET, timeout=10)
    assert (revoked.active, revoked.inactive_reason) == (False, "session_revoked")
    other, _ = signup(api)
    with api.client() as c:
        assert c.delete("/api/v1/users/me", headers=bearer(other)).status_code == 200
    gone = stub.IntrospectToken(pb.IntrospectTokenRequest(token=other["access_token"]), metadata=WALLET, timeout=10)
    assert (gone.active, gone.inactive_reason) == (False, "user_deleted")
    empty = fails(stub.IntrospectToken, pb.IntrospectTokenRequest(), metadata=WALLET, timeout=10)
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


def _store_events(api: Api) -> list[tuple[int, str]]:
    """(position, "aggregate:version") of every published event in the store, in position order."""
    with psycopg.connect(api.database_url) as conn:
        rows = conn.execute(
            "SELECT notification_id, originator_id::text || ':' || originator_version FROM pandora_events"
            " WHERE topic NOT LIKE 'pandora.email_index.%' ORDER BY notification_id"
        ).fetchall()
    return [(int(n), str(key)) for n, key in rows]


def test_stream_events_backlog_equals_the_store_and_the_redis_stream(api: Api, stub: UserServiceStub) -> None:
    signup(api)
    events = list(stub.StreamEvents(pb.StreamEventsRequest(from_position=0), metadata=WALLET, timeout=30))
    stored = _store_events(api)
    assert [(e.position, f"{e.aggregate_id}:{e.aggregate_version}") for e in events] == stored
    by_position = {e.position: e for e in events}
    client = redis.Redis.from_url(api.redis_url, decode_responses=True)
    forwarded = client.xrange(api.stream)
    assert forwarded
    for entry_id, fields in forwarded:
        event = by_position[int(entry_id.split("-")[0])]
        mine = {
            "event_id": event.event_id,
            "event_type": event.event_type,
            "user_id": event.user_id,
            "aggregate_id": event.aggregate_id,
            "aggregate_version": str(event.aggregate_version),
            "position": str(event.position),
            "schema_version": str(event.schema_version),
            "payload": event.payload,
        }
        assert {k: fields[k] for k in mine} == mine
        assert json.loads(fields["metadata"]) == dict(event.metadata)
        assert datetime.fromisoformat(fields["timestamp"]) == event.timestamp.ToDatetime(tzinfo=UTC)
    some = list(
        stub.StreamEvents(
            pb.StreamEventsRequest(from_position=stored[2][0], limit=2, event_types=["user.logged_in"]), metadata=WALLET
        )
    )
    assert len(some) == 2 and all(e.event_type == "user.logged_in" and e.position >= stored[2][0] for e in some)
    for request in (
        pb.StreamEventsRequest(from_position=-1),
        pb.StreamEventsRequest(event_types=["nope"]),
        pb.StreamEventsRequest(user_id="x"),
    ):
        assert (
            fails(lambda r: list(stub.StreamEvents(r, metadata=WALLET)), request).code()
            == grpc.StatusCode.INVALID_ARGUMENT
        )


def test_stream_events_follows_and_resumes_without_gaps(api: Api, stub: UserServiceStub) -> None:
    start = _store_events(api)[-1][0] + 1
    received: list[pb.Event] = []
    first = stub.StreamEvents(pb.StreamEventsRequest(from_position=start, follow=True), metadata=WALLET, timeout=60)

    def consume(stream: Any, into: list[pb.Event], stop_after: int | None) -> None:
        for event in stream:
            into.append(event)
            if stop_after is not None and len(into) >= stop_after:
                stream.cancel()
                return

    reader = threading.Thread(target=consume, args=(first, received, 4))
    reader.start()
    users = [signup(api)[0]["user"]["id"] for _ in range(3)]  # 9 events, written while the stream follows
    reader.join(timeout=20)
    assert not reader.is_alive() and len(received) == 4
    resumed: list[pb.Event] = []
    second = stub.StreamEvents(
        pb.StreamEventsRequest(from_position=received[-1].position + 1, follow=True), metadata=WALLET, timeout=60
    )
    reader = threading.Thread(target=consume, args=(second, resumed, 5))
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive()
    expected = [p for p, _ in _store_events(api) if p >= start]
    assert [e.position for e in received + resumed] == expected
    assert {e.user_id for e in received + resumed} == set(users)


def test_deadline_exceeded_on_a_following_stream(stub: UserServiceStub) -> None:
    stream = stub.StreamEvents(pb.StreamEventsRequest(from_position=10**12, follow=True), metadata=WALLET, timeout=0.5)
    err = fails(lambda: list(stream))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_oversized_message_is_refused_and_the_server_keeps_serving(stub: UserServiceStub) -> None:
    limit = 64 * 1024
    over = pb.GetUserByEmailRequest(email="a" * (limit - 15) + "@example.com")
    assert len(over.SerializeToString()) == limit + 1
    for size in (limit - 15, *[1024 * 1024] * 6):  # 6 MiB in all: more than a connection's flow-control window
        huge = pb.GetUserByEmailRequest(email="a" * size + "@example.com")
        err = fails(stub.GetUserByEmail, huge, metadata=WALLET, timeout=10)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error_code(err) == "PAYLOAD_TOO_LARGE"
    just_fits = pb.GetUserByEmailRequest(email="a" * (limit - 16) + "@example.com")
    assert len(just_fits.SerializeToString()) == limit
    assert fails(stub.GetUserByEmail, just_fits, metadata=WALLET, timeout=10).code() == grpc.StatusCode.NOT_FOUND
    answer = stub.ValidateUser(pb.ValidateUserRequest(user_id=str(uuid.uuid4())), metadata=WALLET, timeout=10)
    assert answer.is_valid is False


def test_health_serving_and_reflection_off(channel: grpc.Channel) -> None:
    check = health_check(channel)
    for service in ("", "pandora.user.v1.UserService"):
        assert check(HealthCheckRequest(service=service), timeout=10).status == HealthCheckResponse.SERVING
    assert fails(check, HealthCheckRequest(service="nope"), timeout=10).code() == grpc.StatusCode.NOT_FOUND
    watch = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )
    updates = watch(HealthCheckRequest(service=""), timeout=10)
    assert next(updates).status == HealthCheckResponse.SERVING
    updates.cancel()
    for version in ("v1", "v1alpha"):
        reflect = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=ServerReflectionRequest.SerializeToString,
            response_deserializer=ServerReflectionResponse.FromString,
        )
        err = fails(lambda r=reflect: list(r(iter([ServerReflectionRequest(list_services="")]), timeout=10)))
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED

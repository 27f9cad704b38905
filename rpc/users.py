"""The user RPCs of SPEC §5.2: reads from the `users` read model, the KYC command of the admin API."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Awaitable, Callable
from uuid import UUID

from api.consistency import encode_token
from api.idempotency import IdempotencyStore, Outcome, StoredResponse, validate_key
from pandora_users.commands import admin
from pandora_users.domain.context import Context
from pandora_users.domain.errors import FieldError, InvalidKycStatus, InvalidRequest, UserNotFound
from pandora_users.domain.fields import canonical_email, clean_reason
from pandora_users.domain.user import KYC_STATUSES
from pandora_users.observability import metrics as m
from projections.queries.pagination import PageRequest, Where, select
from projections.queries.users import COLUMNS, LIVE, UserFilters, is_live, list_users
from rpc.calls import Call, parse_user_id, text
from rpc.convert import user_from_row, user_from_state
from rpc.deps import USERS, RpcDeps
from rpc.gen import user_pb2 as pb

DEFAULT_LIMIT, MAX_LIMIT = 10, 100
MAX_ON_BEHALF_OF = 256


async def get_user_rpc(d: RpcDeps, call: Call, request: pb.GetUserRequest) -> pb.GetUserResponse:
    call.user_id = user_id = parse_user_id(request.user_id)
    row = await d.user_row(call, user_id)
    if not is_live(row):
        raise UserNotFound()
    return pb.GetUserResponse(user=user_from_row(row))


async def get_user_by_email_rpc(d: RpcDeps, call: Call, request: pb.GetUserByEmailRequest) -> pb.GetUserResponse:
    if not request.email.strip():
        raise InvalidRequest("email is required")
    email = canonical_email(request.email)
    if email is None:  # no stored email can equal it
        raise UserNotFound()
    await d.read_wait(call, USERS)
    where = Where()
    where.add(LIVE)
    where.add("email = {}", email)
    row = await d.pool.fetchrow(select(COLUMNS, "users", where), *where.args)
    if row is None:
        raise UserNotFound()
    call.user_id = UUID(str(row["id"]))
    return pb.GetUserResponse(user=user_from_row(row))


async def validate_user_rpc(d: RpcDeps, call: Call, request: pb.ValidateUserRequest) -> pb.ValidateUserResponse:
    """Soft-deleted and erased users are valid but inactive; lockout and sessions play no part."""
    call.user_id = user_id = parse_user_id(request.user_id)
    try:
        row = await d.user_row(call, user_id)
    except UserNotFound:
        return pb.ValidateUserResponse(is_valid=False, is_active=False, kyc_status="")
    return pb.ValidateUserResponse(is_valid=True, is_active=is_live(row), kyc_status=row["kyc_status"])


async def list_users_rpc(d: RpcDeps, call: Call, request: pb.ListUsersRequest) -> pb.ListUsersResponse:
    limit = DEFAULT_LIMIT if request.limit <= 0 else request.limit
    if limit > MAX_LIMIT:
        raise InvalidRequest("limit cannot exceed 100")
    if request.offset < 0:
        raise InvalidRequest("offset must be non-negative")
    await d.read_wait(call, USERS)
    page = await list_users(d.pool, UserFilters(), PageRequest(limit=limit, offset=request.offset))
    return pb.ListUsersResponse(users=[user_from_row(u) for u in page["users"]], total=page["total"])


def _on_behalf_of(value: str) -> str | None:
    person = value.strip()
    if len(person) > MAX_ON_BEHALF_OF or any(unicodedata.category(ch) == "Cc" for ch in person):
        raise InvalidRequest(details=[FieldError("updated_by", "must be at most 256 characters, without controls")])
    return person or None


async def update_kyc_rpc(d: RpcDeps, call: Call, request: pb.UpdateKYCRequest) -> pb.UpdateKYCResponse:
    """The admin KYC update with the calling service as actor; `idempotency-key` as in SPEC §2.12."""
    call.writes = True
    call.user_id = user_id = parse_user_id(request.user_id)
    if request.kyc_status not in KYC_STATUSES:
        raise InvalidKycStatus("invalid KYC status")
    on_behalf_of = _on_behalf_of(request.updated_by)
    call.reason = clean_reason(text(call.metadata, "x-reason"))
    key = validate_key(text(call.metadata, "idempotency-key"))
    ctx = call.context(on_behalf_of=on_behalf_of)
    change = functools.partial(_change_kyc, d, call, user_id, request.kyc_status, ctx)
    if key is None or d.idempotency is None:
        return await change()
    body = request.SerializeToString(deterministic=True) + b"\n" + (call.reason or "").encode()
    return await _idempotent(d.idempotency, call, key, body, change)


async def _idempotent(
    store: IdempotencyStore, call: Call, key: str, body: bytes, run: Callable[[], Awaitable[pb.UpdateKYCResponse]]
) -> pb.UpdateKYCResponse:
    """Replay the first response of (caller, key), refuse a reused key; run unprotected without Redis."""
    scope = f"grpc|{call.actor}|POST|{call.route}"
    begin = await store.begin(scope, key, body)
    if begin.outcome is Outcome.REPLAY and begin.response is not None:
        stored = begin.response
        call.reply_metadata = {k.lower(): v for k, v in stored.headers.items()} | {"x-idempotency-replay": "true"}
        replayed: pb.UpdateKYCResponse = pb.UpdateKYCResponse.FromString(stored.body)
        return replayed
    if begin.outcome is not Outcome.NEW:
        return await run()
    try:
        response = await run()
    except BaseException:
        await store.abandon(scope, key)  # after a failure the key is free again
        raise
    token = call.reply_metadata.get("x-consistency-token")
    headers = {"X-Consistency-Token": token} if token else {}
    await store.complete(scope, key, StoredResponse(200, response.SerializeToString(), headers))
    return response


async def _change_kyc(d: RpcDeps, call: Call, user_id: UUID, status: str, ctx: Context) -> pb.UpdateKYCResponse:
    user, written = await admin.change_kyc(d.write, user_id, status, if_match=None, ctx=ctx)
    if written.position is not None:
        m.kyc_submissions.labels(status).inc()
        if call.actor is not None:
            await d.consistency.remember(call.actor, written.position)
        call.reply_metadata = {"x-consistency-token": encode_token(written.position)}
    return pb.UpdateKYCResponse(user=user_from_state(user))

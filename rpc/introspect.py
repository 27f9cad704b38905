"""IntrospectToken (SPEC §5.2): an access token checked exactly as the HTTP APIs do (§6.1, §6.6).

No audience rule unless `expected_audience` is set. An invalid token is an answer (`active=false` with its
`inactive_reason`), not an error; only an empty token or an unknown expected audience is INVALID_ARGUMENT.
"""

from __future__ import annotations

from uuid import UUID

from pandora_users.domain.errors import InvalidRequest, UserNotFound
from pandora_users.observability import metrics as m
from pandora_users.security.tokens import TokenInvalid
from projections.queries.users import is_live, user_row
from rpc.calls import Call
from rpc.convert import timestamp
from rpc.deps import RpcDeps
from rpc.gen import user_pb2 as pb

AUDIENCES = ("pandora-api", "pandora-admin")


def _inactive(reason: str) -> pb.IntrospectTokenResponse:
    m.token_validation.labels("access", "revoked" if reason in ("session_revoked", "user_deleted") else "invalid").inc()
    m.token_validation_errors.labels(reason).inc()
    return pb.IntrospectTokenResponse(active=False, inactive_reason=reason)


async def introspect_rpc(d: RpcDeps, call: Call, request: pb.IntrospectTokenRequest) -> pb.IntrospectTokenResponse:
    if not request.token:
        raise InvalidRequest("token is required")
    audience = request.expected_audience or None
    if audience is not None and audience not in AUDIENCES:
        raise InvalidRequest("expected_audience must be pandora-api or pandora-admin")
    try:
        claims = d.tokens.verify_access(request.token, audience=audience)
        user_id, session_id = UUID(claims.sub), UUID(claims.sid)
    except TokenInvalid as exc:
        return _inactive(exc.reason)
    except ValueError:  # a signed token whose sub or sid is not a UUID
        return _inactive("malformed")
    state = await d.session_state(session_id)
    if state is not None:
        return _inactive("user_deleted" if state == "deleted" else "session_revoked")
    call.user_id = user_id
    await d.read_wait(call, ("users",))
    try:
        row = await user_row(d.pool, user_id)
    except UserNotFound:
        row = None  # not yet in the read model: the token is still valid, its KYC status unknown
    if row is not None and not is_live(row):
        return _inactive("user_deleted")
    m.token_validation.labels("access", "valid").inc()
    return pb.IntrospectTokenResponse(
        active=True,
        user_id=claims.sub,
        session_id=claims.sid,
        email=claims.email,
        role=claims.role,
        audience=claims.aud,
        jti=claims.jti,
        issued_at=timestamp(claims.iat),
        expires_at=timestamp(claims.exp),
        kyc_status=row["kyc_status"] if row is not None else "",
    )

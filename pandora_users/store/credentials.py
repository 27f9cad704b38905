"""The credential store: statements that run inside event transactions, and the reads commands need.

Every writer here returns a `CredentialOp` for `EventStore.append(events, ops)`, so credential rows commit
or roll back with the events they go with. Readers take a psycopg connection from the event store's pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pandora_users.store.app import EVENTS_TABLE
from pandora_users.store.keys import DELETE_KEY, INSERT_KEY, NOTIFY_DESTROYED
from pandora_users.store.recorder import CredentialOp

if TYPE_CHECKING:
    import asyncpg


def put_data_key(user_id: UUID, wrapped: bytes) -> CredentialOp:
    return CredentialOp("put_data_key", INSERT_KEY, (user_id, wrapped))


def destroy_data_key(user_id: UUID) -> list[CredentialOp]:
    """Delete the key, and tell every process (on commit) to drop its cached copy."""
    return [
        CredentialOp("destroy_data_key", DELETE_KEY, (user_id,)),
        CredentialOp("announce_key_destroyed", NOTIFY_DESTROYED, (str(user_id),)),
    ]


def set_password(user_id: UUID, password_hash: str, now: datetime) -> CredentialOp:
    return CredentialOp(
        "set_password",
        "INSERT INTO credentials (user_id, password_hash, updated_at) VALUES (%s, %s, %s)"
        " ON CONFLICT (user_id) DO UPDATE SET password_hash = EXCLUDED.password_hash, updated_at = EXCLUDED.updated_at",
        (user_id, password_hash, now),
    )


def replace_password_hash(user_id: UUID, old_hash: str, new_hash: str, now: datetime) -> CredentialOp:
    """Rehash on login: only if the hash is still the one that was verified."""
    return CredentialOp(
        "rehash_password",
        "UPDATE credentials SET password_hash = %s, updated_at = %s WHERE user_id = %s AND password_hash = %s",
        (new_hash, now, user_id, old_hash),
    )


@dataclass(frozen=True)
class NewSession:
    session_id: UUID
    user_id: UUID
    audience: str
    created_at: datetime
    expires_at: datetime
    ip_address: str | None
    user_agent: str | None
    refresh_hash: bytes
    # When set, the session opens only while the user's aggregate is still at this version (a login: the state
    # its checks were made on); otherwise `CredentialConflict` and the command runs again on fresh state.
    user_version: int | None = None


def _user_version(user_id: str) -> str:
    """SQL: the version of the user whose id is the SQL expression `user_id`, the last event of its aggregate (one
    probe of the events' primary key)."""
    return f"(SELECT max(originator_version) FROM {EVENTS_TABLE} WHERE originator_id = {user_id})"  # noqa: S608


# The user is still at a version, inside the append's transaction: under group commit its credential statements
# run after the events-table lock is taken, so no other append can commit between this and COMMIT.
_USER_AT = f"{_user_version('%s')} = %s"


def open_session(s: NewSession) -> list[CredentialOp]:
    values = (s.session_id, s.user_id, s.audience, s.created_at, s.created_at, s.expires_at, s.ip_address, s.user_agent)
    insert = (
        "INSERT INTO sessions (id, user_id, audience, created_at, last_used_at, expires_at, generation,"
        " ip_address, user_agent)"
    )
    if s.user_version is None:
        session = CredentialOp("open_session", f"{insert} VALUES (%s, %s, %s, %s, %s, %s, 0, %s, %s)", values)
    else:
        session = CredentialOp(
            "open_session",
            f"{insert} SELECT %s, %s, %s, %s, %s, %s, 0, %s, %s WHERE {_USER_AT}",
            (*values, s.user_id, s.user_version),
            expect_rows=1,
        )
    return [
        session,
        CredentialOp(
            "first_refresh_token",
            "INSERT INTO refresh_tokens (token_hash, session_id, generation, created_at) VALUES (%s, %s, 0, %s)",
            (s.refresh_hash, s.session_id, s.created_at),
        ),
    ]


def end_session(session_id: UUID, reason: str, now: datetime) -> CredentialOp:
    return CredentialOp(
        "end_session",
        "UPDATE sessions SET ended_at = %s, end_reason = %s WHERE id = %s AND ended_at IS NULL",
        (now, reason, session_id),
        expect_rows=1,
    )


def issue_link_token(
    user_id: UUID, purpose: str, token_hash: bytes, now: datetime, expires_at: datetime
) -> list[CredentialOp]:
    """A new link token supersedes the unused ones of the same purpose."""
    return [
        CredentialOp(
            "supersede_link_tokens",
            "UPDATE link_tokens SET superseded_at = %s"
            " WHERE user_id = %s AND purpose = %s AND used_at IS NULL AND superseded_at IS NULL",
            (now, user_id, purpose),
        ),
        CredentialOp(
            "issue_link_token",
            "INSERT INTO link_tokens (token_hash, user_id, purpose, created_at, expires_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (token_hash, user_id, purpose, now, expires_at),
        ),
    ]


def consume_link_token(token_hash: bytes, now: datetime) -> CredentialOp:
    """Single use: the compare-and-set fails when the token was used, superseded or expired meanwhile."""
    return CredentialOp(
        "consume_link_token",
        "UPDATE link_tokens SET used_at = %s"
        " WHERE token_hash = %s AND used_at IS NULL AND superseded_at IS NULL AND expires_at > %s",
        (now, token_hash, now),
        expect_rows=1,
    )


def invalidate_reset_tokens(user_id: UUID, now: datetime) -> CredentialOp:
    return CredentialOp(
        "invalidate_reset_tokens",
        "UPDATE link_tokens SET superseded_at = %s"
        " WHERE user_id = %s AND purpose = 'password_reset' AND used_at IS NULL AND superseded_at IS NULL",
        (now, user_id),
    )


def clear_failures(email_key: UUID) -> CredentialOp:
    return CredentialOp("clear_failures", "DELETE FROM login_failures WHERE email_key = %s", (email_key,))


def erase_credentials(user_id: UUID) -> list[CredentialOp]:
    """Erasure deletes every credential row of the user (§9.5 step 4) and the data key (step 2)."""
    return [
        CredentialOp("erase_sessions", "DELETE FROM sessions WHERE user_id = %s", (user_id,)),
        CredentialOp("erase_password", "DELETE FROM credentials WHERE user_id = %s", (user_id,)),
        CredentialOp("erase_link_tokens", "DELETE FROM link_tokens WHERE user_id = %s", (user_id,)),
        CredentialOp("erase_failures", "DELETE FROM login_failures WHERE user_id = %s", (user_id,)),
        *destroy_data_key(user_id),
    ]


# --- reads -------------------------------------------------------------------------------------------------


def _one(datastore: Any, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
    with datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(sql.encode(), params, prepare=True)
        row: dict[str, Any] | None = curs.fetchone()
        return row


def _all(datastore: Any, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    with datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(sql.encode(), params, prepare=True)
        return list(curs.fetchall())


def password_hash(datastore: Any, user_id: UUID) -> str | None:
    row = _one(datastore, "SELECT password_hash FROM credentials WHERE user_id = %s", (user_id,))
    return None if row is None else str(row["password_hash"])


def live_sessions(datastore: Any, user_id: UUID, now: datetime, idle_timeout: float) -> list[dict[str, Any]]:
    """The user's live sessions (not ended, not expired, not idle past the timeout), newest first."""
    return _all(
        datastore,
        "SELECT * FROM sessions WHERE user_id = %s AND ended_at IS NULL AND expires_at > %s"
        " AND (%s = 0 OR last_used_at + make_interval(secs => %s) > %s) ORDER BY created_at DESC, id DESC",
        (user_id, now, idle_timeout, idle_timeout, now),
    )


def session_row(datastore: Any, session_id: UUID) -> dict[str, Any] | None:
    return _one(datastore, "SELECT * FROM sessions WHERE id = %s", (session_id,))


# The session a refresh token belongs to, with the token's generation (logout).
_LOGOUT_ROW = (
    "SELECT s.*, r.generation AS token_generation"
    " FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = %s"
)

# The session `s` can be refreshed at $2: not ended, expired or idle past $4 seconds (0: no idle timeout), and of
# this endpoint's audience ($3) (SPEC §6.4 steps 2 and 3).
_REFRESHABLE = (
    "s.ended_at IS NULL AND s.expires_at > $2 AND s.audience = $3"
    " AND ($4::float8 = 0 OR s.last_used_at + make_interval(secs => $4::float8) > $2)"
)
# SPEC §6.4 in one round trip. `t` finds the token; `rotated` is the compare-and-set of step 5: it succeeds only
# while the token is the session's current one and the session refreshable (a concurrent rotation or ending makes
# PostgreSQL re-check the row and skip it). The outer query returns the session as it was before, whether it was
# refreshable and the user's version in the same snapshot, and `rotated_to`: the new generation, NULL when nothing
# was rotated. Data-modifying CTEs always run to completion, whether or not the outer query reads them.
_REFRESH = (
    "WITH t AS (SELECT session_id, generation FROM refresh_tokens WHERE token_hash = $1),"  # noqa: S608
    " rotated AS (UPDATE sessions s SET generation = s.generation + 1, last_used_at = $2 FROM t"
    f" WHERE s.id = t.session_id AND s.generation = t.generation AND {_REFRESHABLE} RETURNING s.id, s.generation),"
    " issued AS (INSERT INTO refresh_tokens (token_hash, session_id, generation, created_at)"
    " SELECT $5, id, generation, $2 FROM rotated RETURNING generation)"
    f" SELECT s.*, t.generation AS token_generation, {_REFRESHABLE} AS refreshable,"
    f" {_user_version('s.user_id')} AS user_version, (SELECT generation FROM issued) AS rotated_to"
    " FROM t JOIN sessions s ON s.id = t.session_id"
)
# Undo a rotation the user's state does not allow (step 3 decided after step 5): the session's generation and
# last use go back and the issued token is forgotten, unless something changed the session since.
_UNROTATE = (
    "WITH back AS (UPDATE sessions SET generation = $3, last_used_at = $4 WHERE id = $1 AND generation = $2"
    " RETURNING id) DELETE FROM refresh_tokens WHERE token_hash = $5 AND session_id IN (SELECT id FROM back)"
)


def refresh_token_row(datastore: Any, token_hash: bytes) -> dict[str, Any] | None:
    """The session of a refresh token and the token's generation, on the write pool (in a thread): logout."""
    return _one(datastore, _LOGOUT_ROW, (token_hash,))


async def rotate_refresh_token(
    pool: asyncpg.Pool, token_hash: bytes, new_hash: bytes, audience: str, now: datetime, idle_timeout: float
) -> asyncpg.Record | None:
    """Look the token up and rotate it if it is current and its session live (see `_REFRESH`), on the event loop.

    Never retried after a lost connection (hence `acquire`, not a retried pool read): had the rotation committed,
    the retry would take the token for a reused one."""
    async with pool.acquire() as conn:
        return await conn.fetchrow(_REFRESH, token_hash, now, audience, float(idle_timeout), new_hash)


async def unrotate_refresh_token(pool: asyncpg.Pool, row: asyncpg.Record, new_hash: bytes) -> None:
    async with pool.acquire() as conn:
        await conn.execute(_UNROTATE, row["id"], row["rotated_to"], row["generation"], row["last_used_at"], new_hash)


def link_token_row(datastore: Any, token_hash: bytes) -> dict[str, Any] | None:
    return _one(datastore, "SELECT * FROM link_tokens WHERE token_hash = %s", (token_hash,))

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


def open_session(s: NewSession) -> list[CredentialOp]:
    return [
        CredentialOp(
            "open_session",
            "INSERT INTO sessions (id, user_id, audience, created_at, last_used_at, expires_at, generation,"
            " ip_address, user_agent) VALUES (%s, %s, %s, %s, %s, %s, 0, %s, %s)",
            (
                s.session_id,
                s.user_id,
                s.audience,
                s.created_at,
                s.created_at,
                s.expires_at,
                s.ip_address,
                s.user_agent,
            ),
        ),
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


# The version of the session's user: the last event of its aggregate (one probe of the events' primary key).
USER_VERSION = f"(SELECT max(originator_version) FROM {EVENTS_TABLE} WHERE originator_id = s.user_id)"  # noqa: S608


# The session a refresh token belongs to, with the token's generation (and, for a refresh, the user's version).
_SESSION_OF_REFRESH = (
    "SELECT s.*, r.generation AS token_generation{}"
    " FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = {}"
)
_LOGOUT_ROW = _SESSION_OF_REFRESH.format("", "%s")
_REFRESH_ROW = _SESSION_OF_REFRESH.format(f", {USER_VERSION} AS user_version", "$1")


def refresh_token_row(datastore: Any, token_hash: bytes) -> dict[str, Any] | None:
    """The session of a refresh token and the token's generation, on the write pool (in a thread): logout."""
    return _one(datastore, _LOGOUT_ROW, (token_hash,))


async def refresh_token_record(pool: asyncpg.Pool, token_hash: bytes) -> asyncpg.Record | None:
    """The same with the user's current version, on an asyncpg pool (on the event loop): refresh."""
    return await pool.fetchrow(_REFRESH_ROW, token_hash)


def link_token_row(datastore: Any, token_hash: bytes) -> dict[str, Any] | None:
    return _one(datastore, "SELECT * FROM link_tokens WHERE token_hash = %s", (token_hash,))

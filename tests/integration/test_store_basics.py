"""The event store on real PostgreSQL: atomic appends, one global order, encryption at rest."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from pandora_users.domain import user as user_agg
from pandora_users.store import credentials as cred
from pandora_users.store.app import EventStore
from pandora_users.store.recorder import CredentialConflict, CredentialOp
from tests.unit.given import ctx


def _register(store: EventStore, email: str = "ann@example.com") -> uuid.UUID:
    uid = uuid.uuid4()
    _key, wrapped = store.keys.new_key(uid)
    event = user_agg.register(uid, email=email, first_name="Ann", last_name="Lee", role="user", ctx=ctx())
    store.append([event], [cred.put_data_key(uid, wrapped), cred.set_password(uid, "$argon2id$fake", ctx().now)])
    return uid


def test_append_returns_increasing_positions_and_loads(event_store: EventStore) -> None:
    a = _register(event_store)
    user = event_store.load(a, user_agg.project)
    assert user is not None and user.email == "ann@example.com"
    (event,) = user_agg.change_role(user, "admin", ctx=ctx(1))
    first = event_store.head_position()
    position = event_store.append([event])
    assert position is not None and position > first
    assert event_store.load(a, user_agg.project).role == "admin"  # type: ignore[union-attr]


def test_failed_credential_precondition_writes_nothing(event_store: EventStore, database_url: str) -> None:
    uid = _register(event_store)
    user = event_store.load(uid, user_agg.project)
    assert user is not None
    head = event_store.head_position()
    failing = CredentialOp("cas", "UPDATE credentials SET password_hash = 'x' WHERE user_id = %s AND false", (uid,), 1)
    with pytest.raises(CredentialConflict):
        event_store.append(user_agg.change_role(user, "admin", ctx=ctx()), [failing])
    assert event_store.head_position() == head
    assert event_store.load(uid, user_agg.project).role == "user"  # type: ignore[union-attr]


def test_cache_is_not_needed_to_decrypt(event_store: EventStore) -> None:
    uid = _register(event_store)
    event_store.keys.clear()
    assert event_store.load(uid, user_agg.project).first_name == "Ann"  # type: ignore[union-attr]


def test_raw_events_table_holds_no_personal_data(event_store: EventStore, database_url: str) -> None:
    _register(event_store, "secret.person@example.com")
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT state FROM pandora_events").fetchall()
    raw = b"".join(bytes(r[0]) for r in rows)
    assert b"secret.person" not in raw and b"Ann" not in raw and b"argon2" not in raw


def test_the_urls_libpq_parameters_reach_the_event_stores_connections(database_url: str) -> None:
    """DB_HOST configurations add `?sslmode=...`; every libpq parameter of the URL applies to the pool."""
    from pandora_users.store.app import EventStore, postgres_env
    from tests.conftest import TEST_KEK

    url = f"{database_url}?sslmode=disable&application_name=pandora-params-test"
    store = EventStore(postgres_env(url, pool_size=1, max_overflow=0, lock_timeout=5), TEST_KEK)
    try:
        with store.datastore.get_connection() as conn:
            row = conn.execute("SELECT current_setting('application_name') AS name").fetchone()
        assert row is not None and row["name"] == "pandora-params-test"
        assert store.head_position() >= 0
    finally:
        store.close()


def test_the_statement_timeout_joins_the_urls_own_options(database_url: str) -> None:
    """A serving process's DB_STATEMENT_TIMEOUT is added to any `options` the URL already has."""
    from pandora_users.store.app import EventStore, postgres_env
    from tests.conftest import TEST_KEK

    url = f"{database_url}?options=-c%20work_mem%3D8MB"
    env = postgres_env(url, pool_size=1, max_overflow=0, lock_timeout=5, statement_timeout=1.5)
    store = EventStore(env, TEST_KEK)
    try:
        with store.datastore.get_connection() as conn:
            row = conn.execute(
                "SELECT current_setting('statement_timeout') AS timeout, current_setting('work_mem') AS mem"
            ).fetchone()
        assert row is not None and (row["timeout"], row["mem"]) == ("1500ms", "8MB")
    finally:
        store.close()

"""Schema migrations: the events table (the only place CREATE_TABLE is on) and the SQL files of schema/sql.

Idempotent: each file runs once, recorded in `schema_migrations`, under an advisory lock so that two
processes migrating at once take turns. Key fingerprints are recorded on the first run and checked on every
start, so a changed DATA_ENCRYPTION_KEY or EMAIL_INDEX_KEY is refused instead of corrupting data.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pandora_users.store.app import EventStore

MIGRATION_LOCK = 0x70616E64  # advisory lock id ("pand")


class SchemaOutdated(Exception):
    """The database schema is missing or older than the code (exit code 5)."""


class KeyMismatch(Exception):
    """A configured key does not match the fingerprint recorded at the first migration (exit code 3)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def schema_dir() -> Path:
    packaged = Path(__file__).resolve().parent.parent / "schema" / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "schema" / "sql"


def migrations() -> list[Migration]:
    found = []
    for path in sorted(schema_dir().glob("*.sql")):
        number, _, name = path.stem.partition("_")
        found.append(Migration(int(number), name, path.read_text()))
    if not found:  # a broken install must not look like an up-to-date schema
        raise SchemaOutdated(f"no migration files found in {schema_dir()}")
    return found


def fingerprint(key: bytes) -> str:
    return hmac.new(key, b"pandora-users key fingerprint v1", hashlib.sha256).hexdigest()


def migrate(conninfo: str, store: EventStore, keys: dict[str, bytes]) -> list[int]:
    """Bring the schema up to date; returns the versions applied now."""
    applied_now: list[int] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            store.create_tables()
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in migrations():
                if migration.version in done:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                applied_now.append(migration.version)
            _record_fingerprints(conn, keys)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now


def check(conninfo: str, keys: dict[str, bytes]) -> None:
    """Raise SchemaOutdated or KeyMismatch unless the schema is current and the keys match."""
    wanted = {m.version for m in migrations()}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            raise SchemaOutdated("schema_migrations missing")
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        if not wanted <= done:
            raise SchemaOutdated(f"missing migrations {sorted(wanted - done)}")
        _compare_fingerprints(conn, keys)


def _record_fingerprints(conn: psycopg.Connection[tuple[object, ...]], keys: dict[str, bytes]) -> None:
    for name, key in keys.items():
        conn.execute(
            "INSERT INTO service_fingerprints (name, fingerprint) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
            (name, fingerprint(key)),
        )
    _compare_fingerprints(conn, keys)


def _compare_fingerprints(conn: psycopg.Connection[tuple[object, ...]], keys: dict[str, bytes]) -> None:
    rows = conn.execute("SELECT name, fingerprint FROM service_fingerprints").fetchall()
    stored = {str(name): str(value) for name, value in rows}
    for name, key in keys.items():
        if name in stored and not hmac.compare_digest(str(stored[name]), fingerprint(key)):
            raise KeyMismatch(f"{name.upper()} does not match the fingerprint stored in the database")

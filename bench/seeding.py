"""What the scenarios need: accounts and tokens over the real API, an admin, and many users in bulk.

The bulk users are written through the project's own EventStore and domain functions, as `create-admin` does
(email index claim + `user.registered`, a data key and a password row per user), 500 users per transaction
(their credential rows in one statement each) and one precomputed Argon2id hash for all of them; the running
service's projectors then catch up.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import argon2
import httpx
import psycopg

from pandora_users.bootstrap import crypto_keys, database_url, open_store
from pandora_users.config.settings import Settings, load_settings
from pandora_users.domain import email_index
from pandora_users.domain import user as user_agg
from pandora_users.domain.context import Context
from pandora_users.domain.fields import clean_name, require_email
from pandora_users.store.app import EventStore, postgres_env
from pandora_users.store.recorder import CredentialOp
from projections.runner import read_position

PASSWORD = "correct-horse-battery-42"  # noqa: S105 - the password of every bench account
BUSY = (429, 503)


@dataclass
class Accounts:
    """Seeded accounts: credentials for login, access tokens for /users/me, refresh tokens (one per session)."""

    creds: list[tuple[str, str]] = field(default_factory=list)
    access: list[str] = field(default_factory=list)
    refresh: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)

    def write(self, directory: Path) -> dict[str, Path]:
        files = {
            "creds": directory / "creds.tsv",
            "access": directory / "access_tokens.txt",
            "refresh": directory / "refresh_tokens.txt",
        }
        files["creds"].write_text("".join(f"{e}\t{p}\n" for e, p in self.creds))
        files["access"].write_text("".join(f"{t}\n" for t in self.access))
        files["refresh"].write_text("".join(f"{t}\n" for t in self.refresh))
        return files


async def _post(client: httpx.AsyncClient, url: str, body: dict[str, str], gate: asyncio.Semaphore) -> Any:
    """POST with back-off while the service answers 503/429 (the Argon2 queue is full)."""
    for _ in range(100):
        async with gate:
            response = await client.post(url, json=body)
        if response.status_code not in BUSY:
            response.raise_for_status()
            return response.json()
        await asyncio.sleep(float(response.headers.get("Retry-After", "1")) / 4)
    raise RuntimeError(f"{url}: still busy after 100 attempts")


async def seed_accounts(base_url: str, run: str, count: int, logins: int, parallel: int) -> Accounts:
    """`count` registered accounts (a session each), plus `logins` more sessions per account."""
    accounts = Accounts()
    gate = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

        async def register(n: int) -> None:
            email = f"seed-{run}-{n}@example.com"
            body = {"email": email, "password": PASSWORD, "first_name": "Seed", "last_name": f"Account{n}"}
            auth = await _post(client, "/api/v1/auth/register", body, gate)
            accounts.creds.append((email, PASSWORD))
            accounts.access.append(auth["access_token"])
            accounts.refresh.append(auth["refresh_token"])
            accounts.user_ids.append(auth["user"]["id"])

        async def login(email: str) -> None:
            auth = await _post(client, "/api/v1/auth/login", {"email": email, "password": PASSWORD}, gate)
            accounts.refresh.append(auth["refresh_token"])

        await asyncio.gather(*(register(n) for n in range(count)))
        await asyncio.gather(*(login(email) for email, _ in accounts.creds for _ in range(logins)))
    return accounts


def admin_token(admin_url: str, email: str, password: str) -> str:
    response = httpx.post(
        f"{admin_url}/api/v1/admin/auth/login", json={"email": email, "password": password}, timeout=60
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def password_hash(settings: Settings, password: str = PASSWORD) -> str:
    """One hash with the service's parameters, shared by every bulk user (they can all log in)."""
    hasher = argon2.PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        hash_len=settings.argon2_hash_length,
        salt_len=settings.argon2_salt_length,
        type=argon2.Type.ID,
    )
    return hasher.hash(password)


def bulk_users(env: dict[str, str], run: str, count: int) -> dict[str, Any]:
    """Append `count` registrations, 500 users per transaction; timings and the head position.

    One process: a second one only waits for the events-table lock that every append takes.
    """
    settings = load_settings(env)
    stored_hash = password_hash(settings)
    started = time.perf_counter()
    _append_users(env, run, 0, count, stored_hash)
    seconds = time.perf_counter() - started
    store = open_store(settings)
    try:
        head = store.head_position()
    finally:
        store.close()
    return {
        "users": count,
        "events": 2 * count,
        "seconds": seconds,
        "events_per_second": 2 * count / seconds,
        "head": head,
    }


def _credential_rows(uids: list[uuid.UUID], wrapped: list[bytes], stored_hash: str) -> list[CredentialOp]:
    """The rows `cred.put_data_key` and `cred.set_password` write, for a whole batch in one statement each."""
    now = datetime.now(UTC)
    return [
        CredentialOp(
            "put_data_keys",
            "INSERT INTO subject_keys (user_id, wrapped_key) SELECT * FROM unnest(%s::uuid[], %s::bytea[])",
            (uids, wrapped),
        ),
        CredentialOp(
            "set_passwords",
            "INSERT INTO credentials (user_id, password_hash, updated_at) SELECT u, %s, %s FROM unnest(%s::uuid[]) u",
            (stored_hash, now, uids),
        ),
    ]


def _append_users(env: dict[str, str], run: str, first: int, stop: int, stored_hash: str, per_commit: int = 500) -> int:
    """Users number `first`..`stop`-1: email claim + `user.registered`, a data key and a password row each,
    `per_commit` users per transaction."""
    settings = load_settings(env)
    keys = crypto_keys(settings)
    # Not bootstrap.open_store: its key-invalidation listener clears the key cache when it connects, which
    # can drop the keys made for a batch before it is saved. Nothing is erased here, so no listener.
    store = EventStore(
        postgres_env(database_url(settings), pool_size=1, max_overflow=1, lock_timeout=5), keys["data_encryption_key"]
    )
    pepper = keys["email_index_key"]
    try:
        for low in range(first, stop, per_commit):
            events: list[Any] = []
            uids, wrapped_keys = [], []
            for n in range(low, min(stop, low + per_commit)):
                uid = uuid.uuid4()
                ctx = Context(metadata={"actor_id": str(uid), "actor_role": "user"})
                email = require_email(f"bulk-{run}-{n:06d}@example.com")
                index_uuid = email_index.index_id(pepper, email)
                events.append(email_index.claim(None, index_uuid=index_uuid, user_id=uid, ctx=ctx))
                last = clean_name(f"User{n:06d}", "last_name")
                events.append(
                    user_agg.register(uid, email=email, first_name="Bulk", last_name=last, role="user", ctx=ctx)
                )
                _key, wrapped = store.keys.new_key(uid)
                uids.append(uid)
                wrapped_keys.append(wrapped)
            store.append(events, _credential_rows(uids, wrapped_keys, stored_hash))
    finally:
        store.close()
    return stop - first


def wait_projected(
    settings: Settings, head: int, names: tuple[str, ...] = ("users", "event_log"), timeout: float = 600
) -> float:
    """Seconds until every named projection has reached `head`."""
    started = time.perf_counter()
    with psycopg.connect(database_url(settings), autocommit=True) as conn:
        while min(read_position(conn, name) for name in names) < head:
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"projections did not reach position {head} within {timeout} s")
            time.sleep(0.1)
    return time.perf_counter() - started

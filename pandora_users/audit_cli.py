"""The auditor's commands: history, events (with --follow) and erase (SPEC §11)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from pandora_users.audit import render
from pandora_users.bootstrap import crypto_keys, database_url, ensure_schema, redis_url, write_config
from pandora_users.commands.base import EndedSession, WriteSide
from pandora_users.commands_cli import prepared
from pandora_users.config.settings import Settings
from pandora_users.domain.context import Context
from pandora_users.domain.errors import DomainError, UserNotFound
from pandora_users.domain.events import BY_EVENT_TYPE, PUBLISHED_TOPICS, DomainEvent
from pandora_users.fatal import Fatal
from pandora_users.store.app import EventStore


def _user_id(raw: str, as_json: bool) -> UUID:
    if not render.CANONICAL_UUID.match(raw):
        raise Fatal(2, render.error("invalid_request", f"not a user id: {raw[:64]!r}", as_json=as_json))
    return UUID(raw)


def _emit(dtos: list[dict[str, Any]], columns: tuple[str, ...], as_json: bool) -> None:
    lines = [render.json_line(dto) for dto in dtos] if as_json else render.table(dtos, columns)
    for text in lines:
        print(text)


async def history(raw_id: str, *, order: str, limit: int | None, as_json: bool) -> int:
    """`pandora-users history <user-id>`: the user's published events, as the admin history endpoint."""
    import asyncpg

    user_id = _user_id(raw_id, as_json)
    with prepared() as (settings, store):
        ensure_schema(settings, store, migrate=settings.auto_migrate)
        pool = await asyncpg.create_pool(database_url(settings), min_size=1, max_size=2)
        try:
            await _await_event_log(pool)
            dtos = await _history(pool, store, user_id, order, limit)
        except UserNotFound as exc:
            raise Fatal(6, render.error("user_not_found", "user not found", as_json=as_json)) from exc
        finally:
            await pool.close()
    _emit(dtos, render.HISTORY_COLUMNS, as_json)
    return 0


async def _await_event_log(pool: Any, timeout: float = 5.0) -> None:
    """The history is read from the event_log index: give a running projector a moment to reach the head."""
    head = await pool.fetchval("SELECT coalesce(max(notification_id), 0) FROM pandora_events")
    deadline = time.monotonic() + timeout
    while True:
        reached = await pool.fetchval("SELECT position FROM projection_positions WHERE name = 'event_log'") or 0
        if reached >= head:
            return
        if time.monotonic() >= deadline:
            print(f"warning: event_log is at position {reached} of {head}; is a projector running?", file=sys.stderr)
            return
        await asyncio.sleep(0.1)


async def _history(pool: Any, store: EventStore, user_id: UUID, order: str, limit: int | None) -> list[dict[str, Any]]:
    from projections.queries.events import user_history
    from projections.queries.pagination import MAX_LIMIT, PageRequest

    dtos: list[dict[str, Any]] = []
    cursor: str | None = None
    while limit is None or len(dtos) < limit:
        size = MAX_LIMIT if limit is None else min(MAX_LIMIT, limit - len(dtos))
        page = await user_history(pool, store, user_id, PageRequest(limit=size, cursor=cursor), order=order)
        dtos += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return dtos


def _event_dto(position: int, event: DomainEvent) -> dict[str, Any]:
    """An EventDTO straight from the event store (the same shape as the admin API's)."""
    from projections.integration_events import BY_DOMAIN, SCHEMA_VERSION, event_id
    from projections.queries.events import to_dto

    row = {
        "position": position,
        "event_id": event_id(event.originator_id, event.originator_version),
        "event_type": BY_DOMAIN[type(event)].event_type,
        "user_id": event.user_id,
        "aggregate_id": event.originator_id,
        "aggregate_version": event.originator_version,
        "timestamp": event.timestamp,
        "schema_version": int(SCHEMA_VERSION),
    }
    return to_dto(row, event)


def _topics(types: str | None, as_json: bool) -> list[str]:
    from projections.queries.events import parse_types

    try:
        wanted = parse_types(types)
    except DomainError as exc:
        message = exc.details[0].message if exc.details else exc.message
        raise Fatal(2, render.error("invalid_request", message, as_json=as_json)) from exc
    return [BY_EVENT_TYPE[name].TOPIC for name in wanted] if wanted else list(PUBLISHED_TOPICS)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def events(*, after: int, limit: int | None, types: str | None, follow: bool, as_json: bool) -> int:
    """`pandora-users events`: published events after a position, from the event store; `--follow` tails."""
    topics = _topics(types, as_json)
    remaining = limit if limit is not None else (None if follow else 100)
    collected: list[dict[str, Any]] = []
    columns = render.EVENTS_COLUMNS
    widths = render.widths(columns)
    with prepared() as (settings, store):
        ensure_schema(settings, store, migrate=settings.auto_migrate)
        signal.signal(signal.SIGTERM, _interrupt)
        if follow and not as_json:
            print(render.line(list(columns), widths), flush=True)
        position = after
        while remaining is None or remaining > 0:
            size = min(100, remaining) if remaining is not None else 100
            batch = store.recorder.select_notifications(position + 1, size, topics=topics)
            for notification in batch:
                dto = _event_dto(notification.id, store.decode(notification))
                position = notification.id
                if not follow:
                    collected.append(dto)
                else:
                    text = render.json_line(dto) if as_json else render.line(render.cells(dto, columns), widths)
                    print(text, flush=True)
            remaining = None if remaining is None else remaining - len(batch)
            if len(batch) < size:
                if not follow:
                    break
                time.sleep(0.5)
    if not follow:
        _emit(collected, columns, as_json)
    return 0


async def erase(raw_id: str, *, reason: str, yes: bool, confirm: Callable[[str], str]) -> int:
    """`pandora-users erase <user-id> --reason TEXT [--yes]`: SPEC §9.5 with actor `cli`."""
    from pandora_users.commands import admin
    from pandora_users.domain import user as user_agg
    from pandora_users.domain.fields import clean_reason

    user_id = _user_id(raw_id, False)
    try:
        cleaned = clean_reason(reason)
    except DomainError as exc:
        raise Fatal(2, f"error: --reason {exc.details[0].message if exc.details else exc.message}") from exc
    if cleaned is None:
        raise Fatal(2, "error: --reason must not be empty")
    with prepared() as (settings, store):
        ensure_schema(settings, store, migrate=settings.auto_migrate)
        user = store.load(user_id, user_agg.project)
        if user is None:
            raise Fatal(6, "error: user not found")
        if user.erased_at is not None:
            print("user already erased")
            return 0
        if not yes and _declined(confirm, user_id):
            raise Fatal(2, "error: confirmation declined")
        ctx = Context(metadata={"actor_id": "cli", "actor_role": "admin"}).with_reason(cleaned)
        w = _erasing_side(settings, store)
        try:
            _, written = await admin.erase(w, user_id, if_match=None, ctx=ctx)
        finally:
            w.close()
            w.hasher.close()
    print("user already erased" if written.position is None else f"user erased: {user_id}")
    return 0


def _erasing_side(settings: Settings, store: EventStore) -> WriteSide:
    """A write side for erasure alone (no hashing, no token keys), which records the ended sessions in Redis
    so their access tokens stop working at once (the revocations projector would repair a failed write)."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from pandora_users.security.hashing import PasswordHasher
    from pandora_users.security.passwords import Blocklist
    from projections.revocations import record_revocations

    async def revoke(ended: Sequence[EndedSession]) -> None:
        redis = Redis.from_url(redis_url(settings), socket_connect_timeout=1, socket_timeout=1)
        try:
            await record_revocations(redis, settings.redis_key_prefix, settings.jwt_access_token_expiry, ended)
        except (RedisError, OSError) as exc:
            print(f"warning: revocations not written to Redis ({type(exc).__name__})", file=sys.stderr)
        finally:
            await redis.aclose()

    hasher = PasswordHasher.from_settings(settings)
    pepper = crypto_keys(settings)["email_index_key"]
    return WriteSide(store, pepper, hasher, Blocklist(frozenset()), write_config(settings), on_sessions_ended=revoke)


def _declined(confirm: Callable[[str], str], user_id: UUID) -> bool:
    try:
        typed = confirm(f"This erases user {user_id} for good. Type the user id to confirm: ")
    except EOFError:
        return True
    return typed.strip().lower() != str(user_id)

"""The query side on real PostgreSQL through asyncpg: lists, search, paging, stats, history, global events."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
import pytest

from pandora_users.commands import admin, registration
from pandora_users.commands.base import WriteSide
from pandora_users.domain import events as ev
from pandora_users.domain.context import Context
from pandora_users.domain.errors import InvalidRequest, UserNotFound
from pandora_users.store.app import EventStore
from projections.event_log import event_id
from projections.queries import read_model_position
from projections.queries.events import global_events, user_history
from projections.queries.pagination import PageRequest, select
from projections.queries.users import (
    UserFilters,
    active_sessions,
    get_user,
    list_users,
    list_where,
    rows_sql,
    search_hits,
    search_users,
    user_stats,
)
from projections.rebuild import rebuild_all
from tests.integration.test_read_models import ADMIN, project_to_head, seed_user
from tests.integration.test_registration import reg

T = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
def directory(event_store: EventStore, database_url: str) -> dict[str, uuid.UUID]:
    """Nine users with known creation times, statuses and awkward names, projected."""
    specs: list[tuple[str, dict[str, Any]]] = [
        ("ann", {"email": "ann@example.com", "first": "Ann", "last": "Lee", "at": T, "kyc": "verified"}),
        ("bob", {"email": "bob@example.com", "first": "Bob", "last": "100%_Real", "at": T + timedelta(hours=1)}),
        ("cy", {"email": "cy@shop.example", "first": "Cy", "last": "Percent", "at": T + timedelta(hours=2)}),
        ("dee", {"email": "dee@example.com", "first": "Dee", "last": "Mixed", "at": T + timedelta(hours=3)}),
        ("eve", {"email": "eve_1@example.com", "first": "Eve", "last": "Low", "at": T + timedelta(hours=4)}),
        ("fay", {"email": "fay@example.com", "first": "Fay", "last": "Admin", "at": T + timedelta(hours=5)}),
        ("gus", {"email": "gus@example.com", "first": "Gus", "last": "Gone", "at": T + timedelta(hours=6)}),
        ("hal", {"email": "hal@example.com", "first": "Hal", "last": "Twin", "at": T + timedelta(hours=7)}),
        ("ivy", {"email": "ivy@example.com", "first": "Ivy", "last": "Twin", "at": T + timedelta(hours=7)}),
    ]
    extra = {"dee": {"kyc": "rejected"}, "fay": {"role": "admin", "kyc": "verified"}, "gus": {"deleted": True}}
    users = {key: seed_user(event_store, **spec, **extra.get(key, {})).id for key, spec in specs}
    project_to_head(event_store, database_url)
    return users


def ids(page: dict[str, Any]) -> list[str]:
    return [u["id"] for u in page["users"]]


def newest_first(users: dict[str, uuid.UUID], *keys: str) -> list[str]:
    """The expected order: created_at descending, then id descending (hal and ivy share a creation time)."""
    order = ["ivy", "hal"] if str(users["ivy"]) > str(users["hal"]) else ["hal", "ivy"]
    ranked = [*order, "gus", "fay", "eve", "dee", "cy", "bob", "ann"]
    return [str(users[k]) for k in ranked if k in keys]


ALL = ("ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy")
LIVE = tuple(k for k in ALL if k != "gus")


async def test_list_orders_newest_first_with_real_totals_and_filters(
    pool: asyncpg.Pool, directory: dict[str, uuid.UUID]
) -> None:
    page = await list_users(pool, UserFilters(), PageRequest())
    assert ids(page) == newest_first(directory, *LIVE) and page["total"] == 8
    assert (page["limit"], page["offset"], page["next_cursor"]) == (20, 0, None)
    everyone = await list_users(pool, UserFilters(include_deleted=True), PageRequest())
    assert ids(everyone) == newest_first(directory, *ALL) and everyone["total"] == 9
    verified = await list_users(pool, UserFilters(kyc_status="verified"), PageRequest())
    assert ids(verified) == newest_first(directory, "ann", "fay")
    admins = await list_users(pool, UserFilters(role="admin"), PageRequest())
    assert ids(admins) == newest_first(directory, "fay")
    window = UserFilters(created_from=T + timedelta(hours=1), created_to=T + timedelta(hours=3))
    assert ids(await list_users(pool, window, PageRequest())) == newest_first(directory, "bob", "cy")
    small = await list_users(pool, UserFilters(), PageRequest(limit=3, offset=3))
    assert ids(small) == newest_first(directory, *LIVE)[3:6] and small["total"] == 8
    assert small["next_cursor"] is not None
    with pytest.raises(InvalidRequest) as bad:
        await list_users(pool, UserFilters(kyc_status="done"), PageRequest())
    assert bad.value.details[0].field == "kyc_status"


async def test_admin_user_dto_fields(pool: asyncpg.Pool, directory: dict[str, uuid.UUID]) -> None:
    fay = await get_user(pool, directory["fay"])
    assert set(fay) == {
        "id",
        "email",
        "first_name",
        "last_name",
        "role",
        "kyc_status",
        "email_verified",
        "email_verified_at",
        "created_at",
        "updated_at",
        "is_active",
        "is_locked",
        "locked_until",
        "deleted_at",
        "erased_at",
        "version",
    }
    assert (fay["role"], fay["kyc_status"], fay["version"], fay["is_active"], fay["is_locked"]) == (
        "admin",
        "verified",
        3,
        True,
        False,
    )
    assert fay["created_at"] == "2026-01-10T14:00:00.000000Z" and TIMESTAMP.match(fay["updated_at"])
    gus = await get_user(pool, directory["gus"])
    assert gus["is_active"] is False and TIMESTAMP.match(gus["deleted_at"])
    with pytest.raises(UserNotFound):
        await get_user(pool, uuid.uuid4())


async def test_a_cursor_walk_is_stable_under_concurrent_inserts(
    pool: asyncpg.Pool, directory: dict[str, uuid.UUID], event_store: EventStore, database_url: str
) -> None:
    first = await list_users(pool, UserFilters(), PageRequest(limit=3))
    for i in range(4):  # newer users arrive between the pages
        seed_user(event_store, email=f"new{i}@example.com", at=T + timedelta(days=1, minutes=i))
    project_to_head(event_store, database_url)
    walked, cursor = ids(first), first["next_cursor"]
    while cursor is not None:
        page = await list_users(pool, UserFilters(), PageRequest(limit=3, cursor=cursor))
        assert page["offset"] == 0 and page["total"] == 12
        walked += ids(page)
        cursor = page["next_cursor"]
    assert walked == newest_first(directory, *LIVE)  # nothing skipped, nothing repeated
    by_offset = await list_users(pool, UserFilters(), PageRequest(limit=3, offset=3))
    assert ids(by_offset) != walked[3:6]  # offset paging shifted under the inserts


async def test_cursors_are_refused_for_other_filters_with_an_offset_or_when_forged(
    pool: asyncpg.Pool, directory: dict[str, uuid.UUID]
) -> None:
    cursor = (await list_users(pool, UserFilters(), PageRequest(limit=2)))["next_cursor"]
    assert cursor is not None
    for call in (
        list_users(pool, UserFilters(role="user"), PageRequest(limit=2, cursor=cursor)),
        list_users(pool, UserFilters(include_deleted=True), PageRequest(limit=2, cursor=cursor)),
        search_users(pool, "example", False, PageRequest(limit=2, cursor=cursor)),
        list_users(pool, UserFilters(), PageRequest(cursor="not-a-cursor!")),
        list_users(pool, UserFilters(), PageRequest(cursor=cursor[:-4])),
        list_users(pool, UserFilters(), PageRequest(cursor=base64.urlsafe_b64encode(b"[" * 5000).decode())),
    ):
        with pytest.raises(InvalidRequest) as refused:
            await call
        assert [d.field for d in refused.value.details] == ["cursor"]
    with pytest.raises(InvalidRequest) as with_offset:
        PageRequest.parse(limit="2", offset="1", cursor=cursor)
    assert with_offset.value.details[0].field == "cursor"
    for bad in (
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "x"},
        {"limit": "--5"},
        {"offset": "-1"},
        {"offset": "1.5"},
    ):
        with pytest.raises(InvalidRequest) as invalid:
            PageRequest.parse(**bad)
        assert invalid.value.details[0].field in bad
    assert PageRequest.parse("100", "0", None) == PageRequest(100, 0, None)


async def test_search_is_a_literal_case_insensitive_substring(
    pool: asyncpg.Pool, directory: dict[str, uuid.UUID]
) -> None:
    async def found(query: str, include_deleted: bool = False) -> set[uuid.UUID]:
        page = await search_users(pool, query, include_deleted, PageRequest())
        assert page["total"] == len(page["users"])
        return {uuid.UUID(u["id"]) for u in page["users"]}

    d = directory
    assert await found("  ANN@ ") == {d["ann"]}  # trimmed, case-insensitive, email
    assert await found("twin") == {d["hal"], d["ivy"]}  # last name
    assert await found("%") == {d["bob"]}  # literal percent, not a wildcard
    assert await found("0%_r") == {d["bob"]}
    assert await found("e_1") == {d["eve"]}  # literal underscore
    assert await found("_") == {d["bob"], d["eve"]}
    assert await found("shop.") == {d["cy"]}
    assert await found("gone") == set() and await found("gone", include_deleted=True) == {d["gus"]}
    for query in ("", "   ", "x" * 257):
        with pytest.raises(InvalidRequest) as refused:
            await search_users(pool, query, False, PageRequest())
        assert refused.value.details[0].field == "query"


async def test_search_pages_alike_whichever_plan_serves_them(
    pool: asyncpg.Pool, directory: dict[str, uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few matches are sorted from the trigram index's hits, many are met walking created_at: same pages."""
    import projections.queries.users as queries

    async def walk(query: str, include_deleted: bool) -> list[dict[str, Any]]:
        pages = [await search_users(pool, query, include_deleted, PageRequest(limit=2, offset=1))]
        pages.append(await search_users(pool, query, include_deleted, PageRequest(limit=2)))
        while pages[-1]["next_cursor"] is not None:
            cursor = pages[-1]["next_cursor"]
            pages.append(await search_users(pool, query, include_deleted, PageRequest(limit=2, cursor=cursor)))
        return pages

    cases = [(query, deleted) for query in ("e", "example.com", "twin", "nobody") for deleted in (False, True)]
    few = {case: await walk(*case) for case in cases}
    monkeypatch.setattr(queries, "TRIGRAM_FIRST_MAX", 0)
    assert {case: await walk(*case) for case in cases} == few
    everyone = few[("example.com", True)]
    assert [i for page in everyone[1:] for i in ids(page)] == newest_first(directory, *ALL[:2], *ALL[3:])
    assert everyone[0]["total"] == 8 and ids(everyone[0]) == newest_first(directory, *ALL[:2], *ALL[3:])[1:3]
    nothing = {"users": [], "total": 0, "limit": 2, "next_cursor": None}
    assert few[("nobody", False)] == [{**nothing, "offset": 1}, {**nothing, "offset": 0}]


async def test_erased_users_never_match_and_show_erased_fields(
    pool: asyncpg.Pool, write_side: WriteSide, database_url: str
) -> None:
    grant = await registration.register(write_side, reg("zed@example.com"), Context())
    await admin.erase(write_side, grant.user.id, if_match=None, ctx=ADMIN)
    project_to_head(write_side.store, database_url)
    for query in ("zed", "erased", "[erased]"):
        assert (await search_users(pool, query, True, PageRequest()))["users"] == []
    zed = await get_user(pool, grant.user.id)
    assert (zed["email"], zed["first_name"], zed["last_name"], zed["is_active"]) == ("[erased]",) * 3 + (False,)
    assert TIMESTAMP.match(zed["erased_at"])
    listed = await list_users(pool, UserFilters(include_deleted=True), PageRequest())
    assert ids(listed) == [str(grant.user.id)]
    assert (await list_users(pool, UserFilters(), PageRequest()))["total"] == 0


async def test_stats_and_live_sessions(pool: asyncpg.Pool, directory: dict[str, uuid.UUID], database_url: str) -> None:
    assert await user_stats(pool) == {
        "total_users": 8,
        "deleted_users": 1,
        "users_by_kyc_status": {"pending": 5, "verified": 2, "rejected": 1},
        "users_by_role": {"user": 7, "admin": 1},
    }
    now = datetime.now(UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for created, expires, ended, used in (
            (now, now + timedelta(hours=1), None, now),  # live
            (now, now + timedelta(hours=1), now, now),  # ended
            (now - timedelta(days=8), now - timedelta(hours=1), None, now),  # expired
            (now, now + timedelta(hours=1), None, now - timedelta(hours=2)),  # idle
        ):
            conn.execute(
                "INSERT INTO sessions (id, user_id, audience, created_at, last_used_at, expires_at, ended_at)"
                " VALUES (%s, %s, 'pandora-api', %s, %s, %s, %s)",
                (uuid.uuid4(), directory["ann"], created, used, expires, ended),
            )
    assert await active_sessions(pool) == 2
    assert await active_sessions(pool, idle_timeout=3600) == 1


async def test_history_orders_filters_pages_and_hides_link_tokens(
    pool: asyncpg.Pool, write_side: WriteSide, database_url: str
) -> None:
    w = write_side
    grant = await registration.register(w, reg("kim@example.com"), Context())
    user_id = grant.user.id
    await admin.change_kyc(w, user_id, "verified", if_match=None, ctx=ADMIN.with_reason("documents checked"))
    await admin.change_kyc(w, user_id, "rejected", if_match=None, ctx=ADMIN)
    project_to_head(w.store, database_url)
    desc = await user_history(pool, w.store, user_id, PageRequest())
    types = [e["event_type"] for e in desc["events"]]
    assert types == [
        "user.kyc.updated",
        "user.kyc.updated",
        "user.email_verification.requested",
        "user.logged_in",
        "user.registered",
    ]
    assert desc["total"] == 5 and desc["next_cursor"] is None
    asc = await user_history(pool, w.store, user_id, PageRequest(), order="asc")
    assert [e["position"] for e in asc["events"]] == sorted(e["position"] for e in desc["events"])
    link = next(e for e in desc["events"] if e["event_type"] == "user.email_verification.requested")
    assert set(link["payload"]) == {"email", "first_name", "expires_at"}  # never the token or the link
    kyc = desc["events"][1]
    assert kyc["payload"] == {"email": "kim@example.com", "kyc_status": "verified", "old_status": "pending"}
    assert kyc["metadata"]["reason"] == "documents checked" and kyc["metadata"]["ip_address"] == "10.0.0.7"
    assert kyc["event_id"] == str(event_id(user_id, kyc["aggregate_version"])) and kyc["schema_version"] == 1
    assert TIMESTAMP.match(kyc["timestamp"]) and kyc["user_id"] == kyc["aggregate_id"] == str(user_id)
    only_kyc = await user_history(pool, w.store, user_id, PageRequest(limit=1), types="user.kyc.updated")
    assert only_kyc["total"] == 2 and len(only_kyc["events"]) == 1
    second = await user_history(
        pool, w.store, user_id, PageRequest(limit=1, cursor=only_kyc["next_cursor"]), types="user.kyc.updated"
    )
    assert [e["position"] for e in only_kyc["events"] + second["events"]] == [e["position"] for e in desc["events"][:2]]
    assert second["next_cursor"] is None
    with pytest.raises(InvalidRequest):  # a cursor of the descending walk is not one of the ascending walk
        await user_history(pool, w.store, user_id, PageRequest(cursor=only_kyc["next_cursor"]), order="asc")
    with pytest.raises(InvalidRequest):
        await user_history(pool, w.store, user_id, PageRequest(), types="user.nope")
    with pytest.raises(UserNotFound):
        await user_history(pool, w.store, uuid.uuid4(), PageRequest())


async def test_history_shows_erased_personal_data_after_erasure(
    pool: asyncpg.Pool, write_side: WriteSide, database_url: str
) -> None:
    w = write_side
    grant = await registration.register(w, reg("lou@example.com"), Context())
    await admin.change_kyc(w, grant.user.id, "verified", if_match=None, ctx=ADMIN)
    await admin.erase(w, grant.user.id, if_match=None, ctx=ADMIN.with_reason("gdpr request"))
    project_to_head(w.store, database_url)
    history = await user_history(pool, w.store, grant.user.id, PageRequest(), order="asc")
    by_type = {e["event_type"]: e for e in history["events"]}
    assert by_type["user.registered"]["payload"]["email"] == ev.ERASED
    assert by_type["user.registered"]["payload"]["first_name"] == ev.ERASED
    assert by_type["user.logged_in"]["payload"]["ip_address"] == ev.ERASED
    assert by_type["user.kyc.updated"]["payload"] == {
        "email": ev.ERASED,
        "kyc_status": "verified",
        "old_status": "pending",
    }
    assert by_type["user.kyc.updated"]["metadata"]["ip_address"] == ev.ERASED
    assert by_type["user.erased"]["metadata"]["reason"] == "gdpr request"  # reasons stay readable
    assert "token" not in by_type["user.email_verification.requested"]["payload"]
    assert by_type["user.session.revoked"]["payload"]["reason"] == "account_erased"


async def test_global_events_tail_and_filters(pool: asyncpg.Pool, write_side: WriteSide, database_url: str) -> None:
    w = write_side
    ann = (await registration.register(w, reg("ann@example.com"), Context())).user.id
    bob = (await registration.register(w, reg("bob@example.com"), Context())).user.id
    await admin.change_kyc(w, bob, "verified", if_match=None, ctx=ADMIN)
    project_to_head(w.store, database_url)
    head = w.store.head_position()
    everything = await global_events(pool, w.store, limit=100)
    positions = [e["position"] for e in everything["events"]]
    assert positions == sorted(positions) and len(positions) == 7  # the email-index events are not published
    assert everything["head_position"] == head and everything["next_after_position"] == positions[-1]
    first = await global_events(pool, w.store, limit=2)
    rest = await global_events(pool, w.store, after_position=first["next_after_position"], limit=100)
    assert [e["position"] for e in first["events"] + rest["events"]] == positions
    empty = await global_events(pool, w.store, after_position=head)
    assert (empty["events"], empty["next_after_position"], empty["head_position"]) == ([], None, head)
    kyc = await global_events(pool, w.store, types="user.kyc.updated,user.registered", user_id=bob)
    assert [e["event_type"] for e in kyc["events"]] == ["user.registered", "user.kyc.updated"]
    by_admin = await global_events(pool, w.store, actor_id=ADMIN.metadata["actor_id"])
    assert [e["user_id"] for e in by_admin["events"]] == [str(bob)]
    stamps = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in everything["events"]]
    window = await global_events(pool, w.store, from_=stamps[3], to=stamps[3] + timedelta(microseconds=1))
    assert {e["timestamp"] for e in window["events"]} == {everything["events"][3]["timestamp"]}
    mine = await global_events(pool, w.store, user_id=ann, limit=100)
    assert {e["user_id"] for e in mine["events"]} == {str(ann)}
    naive = datetime(2026, 1, 1)
    for bad in ({"limit": 0}, {"limit": 101}, {"after_position": -1}, {"types": "nope"}, {"from_": naive}):
        with pytest.raises(InvalidRequest):
            await global_events(pool, w.store, **bad)


def search_index_options(conninfo: str) -> list[str]:
    """The storage options of the trigram index of the table behind `users`."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT c.reloptions FROM read_model_tables m JOIN pg_index i ON i.indrelid = to_regclass(m.active_table)"
            " JOIN pg_class c ON c.oid = i.indexrelid WHERE m.name = 'users' AND c.relname LIKE '%search_trgm_idx'"
        ).fetchone()
    assert row is not None
    return list(row[0] or [])


async def test_queries_and_positions_survive_a_rebuild_swap(
    pool: asyncpg.Pool, directory: dict[str, uuid.UUID], event_store: EventStore, database_url: str
) -> None:
    before = await list_users(pool, UserFilters(include_deleted=True), PageRequest())
    history = await user_history(pool, event_store, directory["dee"], PageRequest())
    head = event_store.head_position()
    assert await read_model_position(pool, ["users", "event_log"]) == head
    assert search_index_options(database_url) == ["gin_pending_list_limit=256"]
    rebuild_all(event_store, database_url)
    assert search_index_options(database_url) == ["gin_pending_list_limit=256"]  # schema/sql/005
    with psycopg.connect(database_url) as conn:  # analyzed before the swap
        analyzed = conn.execute("SELECT count(*) FROM pg_stats WHERE tablename = 'users_v2'").fetchone()
    assert analyzed is not None and analyzed[0] > 0
    assert await list_users(pool, UserFilters(include_deleted=True), PageRequest()) == before
    assert await user_history(pool, event_store, directory["dee"], PageRequest()) == history
    assert await read_model_position(pool, ["users", "event_log"]) == head
    assert await read_model_position(pool, ["users", "never-ran"]) == 0


@pytest.mark.slow
async def test_plans_at_100k_users_use_the_trigram_and_created_at_indexes(database_url: str) -> None:
    """Plan shape, not timing, over 100,000 users, both right after a bulk load (no statistics: the planner then
    walked the created_at index filtering every row) and analyzed: search's total and page go through the trigram
    index, the list through the created_at index."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE users_v1 SET (autovacuum_enabled = off)")  # no statistics until we ask
        conn.execute(
            "INSERT INTO users_v1 (id, email, first_name, last_name, role, kyc_status, created_at, updated_at,"
            " version, position, deleted_at)"
            " SELECT gen_random_uuid(), 'user' || i || '@example.com', 'First' || i, 'Last' || (i % 977),"
            " CASE WHEN i % 50 = 0 THEN 'admin' ELSE 'user' END, (ARRAY['pending','verified','rejected'])[i % 3 + 1],"
            " now() - i * interval '1 minute', now(), 1, i, CASE WHEN i % 20 = 0 THEN now() END"
            " FROM generate_series(1, 100000) AS i"
        )
    async with asyncpg.create_pool(database_url, min_size=1, max_size=1) as pool:

        async def plans() -> dict[str, str]:
            source, hits = search_hits("user4242@", False)
            where = list_where(UserFilters())
            statements = {
                "search total": (select("count(*)", source, hits), hits.args),
                "search page": rows_sql(hits, None, PageRequest(), source),
                "list page": rows_sql(where, None, PageRequest()),
            }
            return {
                label: "\n".join(r[0] for r in await pool.fetch("EXPLAIN " + text, *args))
                for label, (text, args) in statements.items()
            }

        for analyzed in (False, True):
            if analyzed:
                await pool.execute("ANALYZE users_v1")
            for label, plan in (await plans()).items():
                if label.startswith("search"):
                    assert "users_v1_search_trgm_idx" in plan and "created_idx" not in plan, (analyzed, plan)
                    assert "Seq Scan" not in plan, (analyzed, plan)
                else:
                    assert "users_v1_live_created_idx" in plan and "Sort" not in plan, (analyzed, plan)
            page = await search_users(pool, "user4242@", False, PageRequest())
            assert page["total"] == 1 and page["users"][0]["email"] == "user4242@example.com"


def test_search_uses_the_indexed_expression_verbatim() -> None:
    from pathlib import Path

    from projections.queries.users import SEARCH_TEXT

    ddl = (Path(__file__).resolve().parents[2] / "schema" / "sql" / "003_read_models.sql").read_text()
    assert f"USING gin ({SEARCH_TEXT} gin_trgm_ops)" in ddl

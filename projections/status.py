"""Projection lag (SPEC §3.5): 0 when caught up, else the age of the oldest event not yet processed."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import msgspec

from projections.registry import NAMES


class _Stamp(msgspec.Struct):
    timestamp: datetime


_decode = msgspec.json.Decoder(_Stamp).decode

# For each projection, the first event after its position (the timestamp is not personal: never encrypted).
LAG_SQL = """
SELECT n.name, coalesce(p.position, 0) AS position,
       (SELECT e.state FROM pandora_events e WHERE e.notification_id > coalesce(p.position, 0)
        ORDER BY e.notification_id LIMIT 1) AS next_state
FROM unnest($1::text[]) AS n(name) LEFT JOIN projection_positions p ON p.name = n.name
"""


async def projection_lags(pool: asyncpg.Pool, names: tuple[str, ...] = NAMES) -> dict[str, float]:
    now = datetime.now(UTC)
    rows = await pool.fetch(LAG_SQL, list(names))
    lags: dict[str, float] = {}
    for row in rows:
        state = row["next_state"]
        lags[row["name"]] = 0.0 if state is None else max(0.0, (now - _decode(bytes(state)).timestamp).total_seconds())
    return lags


async def projection_positions(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT name, position FROM projection_positions WHERE name = ANY($1::text[])", list(NAMES))
    return {row["name"]: int(row["position"]) for row in rows}

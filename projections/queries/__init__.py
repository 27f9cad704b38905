"""The query side: async reads of the read models with asyncpg (never the write side).

`users` answers the admin user directory and stats, `events` a user's history and the global event log,
`pagination` holds the limit/offset/cursor rules they share.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg


async def read_model_position(pool: asyncpg.Pool, names: Iterable[str]) -> int:
    """The position every named projection has reached (the smallest of theirs; 0 if one never ran).

    A read served from these projections reflects at least this position (the X-Consistency-Token to return).
    """
    wanted = sorted(set(names))
    rows = await pool.fetch("SELECT name, position FROM projection_positions WHERE name = ANY($1::text[])", wanted)
    found = {row["name"]: int(row["position"]) for row in rows}
    return min((found.get(name, 0) for name in wanted), default=0)

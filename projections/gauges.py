"""Gauges read from the database when /metrics is scraped (shared state, so any replica reports it)."""

from __future__ import annotations

import asyncpg

from pandora_users.observability import metrics as m
from projections.status import projection_lags, projection_positions

GAUGES_SQL = """
SELECT (SELECT coalesce(max(notification_id), 0) FROM pandora_events) AS head,
       (SELECT count(*) FROM sessions WHERE ended_at IS NULL AND expires_at > now()) AS sessions,
       (SELECT count(*) FROM users WHERE deleted_at IS NULL AND erased_at IS NULL) AS users
"""


async def refresh_gauges(pool: asyncpg.Pool) -> None:

    row = await pool.fetchrow(GAUGES_SQL)
    if row is not None:
        m.head_position.set(row["head"])
        m.active_sessions.set(row["sessions"])
        m.active_users.set(row["users"])
    for name, lag in (await projection_lags(pool)).items():
        m.projection_lag.labels(name).set(lag)
        if name == "forwarder":
            m.forwarder_lag_seconds.set(lag)
    positions = await projection_positions(pool)
    for name, position in positions.items():
        m.projection_position.labels(name).set(position)
    if row is not None:
        m.forwarder_lag_events.set(max(0, row["head"] - positions.get("forwarder", 0)))

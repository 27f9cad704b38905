"""The /api/v1/admin controllers of the admin listener."""

from __future__ import annotations

from typing import Any


def admin_routes() -> list[Any]:
    """Every admin controller (added as they are built)."""
    return []

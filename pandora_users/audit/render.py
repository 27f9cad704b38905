"""How the CLI prints events (SPEC §11): aligned tables with a header row, or JSON Lines of EventDTOs.

Pure functions of EventDTOs (plain dicts, SPEC §2.13); the commands that fetch them live in commands_cli.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

CANONICAL_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

HISTORY_COLUMNS = ("POSITION", "TIME", "TYPE", "ACTOR", "SUMMARY")
EVENTS_COLUMNS = ("POSITION", "TIME", "TYPE", "USER", "ACTOR", "SUMMARY")
# Minimum widths, so that a followed log (printed as it comes) stays aligned.
MIN_WIDTHS = {"POSITION": 8, "TIME": 27, "TYPE": 26, "USER": 36, "ACTOR": 36, "SUMMARY": 0}
_encoder = msgspec.json.Encoder()


def actor(dto: Mapping[str, Any]) -> str:
    metadata = dto.get("metadata") or {}
    return str(metadata.get("actor_id") or metadata.get("actor_role") or "-")


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def summary(dto: Mapping[str, Any]) -> str:
    """The payload as `key=value` pairs, then the admin's reason (which is in the metadata)."""
    parts = [f"{key}={_value(value)}" for key, value in (dto.get("payload") or {}).items()]
    reason = (dto.get("metadata") or {}).get("reason")
    if reason:
        parts.append(f"reason={' '.join(str(reason).split())!r}")
    return " ".join(parts)


def cells(dto: Mapping[str, Any], columns: Sequence[str]) -> list[str]:
    values = {
        "POSITION": str(dto["position"]),
        "TIME": str(dto["timestamp"]),
        "TYPE": str(dto["event_type"]),
        "USER": str(dto["user_id"]),
        "ACTOR": actor(dto),
        "SUMMARY": summary(dto),
    }
    return [values[column] for column in columns]


def widths(columns: Sequence[str], rows: Iterable[Sequence[str]] = ()) -> list[int]:
    """Each column as wide as its widest cell (at least its minimum and its title)."""
    result = [max(MIN_WIDTHS[c], len(c)) for c in columns]
    for row in rows:
        result = [max(w, len(cell)) for w, cell in zip(result, row, strict=True)]
    return result


def line(row: Sequence[str], column_widths: Sequence[int]) -> str:
    """Cells separated by two spaces; the last one is not padded."""
    padded = [cell.ljust(width) for cell, width in zip(row[:-1], column_widths, strict=False)]
    return "  ".join([*padded, row[-1]]).rstrip()


def table(dtos: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    """A header row and one aligned row per event."""
    rows = [cells(dto, columns) for dto in dtos]
    column_widths = widths(columns, rows)
    return [line(list(columns), column_widths), *(line(row, column_widths) for row in rows)]


def json_line(dto: Mapping[str, Any]) -> str:
    return _encoder.encode(dto).decode()


def error(code: str, message: str, *, as_json: bool) -> str:
    """`error: <message>`, or with `--json` the error object of SPEC §2.6."""
    if as_json:
        return json_line({"error": code, "message": message, "code": code.upper()})
    return f"error: {message}"

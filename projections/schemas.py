"""JSON Schemas (draft 2020-12) of the stream entries, generated from the contract in `integration_events`.

`python -m projections.schemas` writes `schema/events/<event_type>.json` (one per published type) and
`schema/events/index.json` (any entry); `--check` writes nothing and exits 1 when the files have drifted.
Generated files are never hand-edited (STYLE.md rule 10).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from projections.integration_events import (
    CONTRACTS,
    ENTRY_FIELDS,
    METADATA_KEYS,
    PERSONAL_METADATA_KEYS,
    SCHEMA_VERSION,
    Contract,
    Field,
)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://pandora.exchange/schemas/user-service/events/"
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "schema" / "events"
UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
TIMESTAMP_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$"
DECIMAL_PATTERN = "^[1-9][0-9]*$"
PERSONAL_NOTE = 'Personal data: "[erased]" once the user is erased.'


def _uuid(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": UUID_PATTERN, "description": description}


def _timestamp(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN, "description": description}


def field_schema(field: Field) -> dict[str, Any]:
    """The schema of one payload field."""
    if field.kind == "timestamp":
        schema = _timestamp("RFC 3339 UTC with six fractional digits.")
    elif field.kind == "uuid":
        schema = _uuid("Lower-case canonical UUID.")
    elif field.kind == "count":
        schema = {"type": "integer", "minimum": 0}
    elif field.kind == "uuid_list":
        schema = {"type": "array", "items": {"type": "string", "pattern": UUID_PATTERN}}
    elif field.kind == "text_list":
        schema = {"type": "array", "items": _text(field)}
    else:
        schema = _text(field)
    if field.nullable:
        schema["type"] = [schema["type"], "null"]
    if field.personal:
        schema["x-personal"] = True
        schema["description"] = PERSONAL_NOTE
    if field.link_secret:
        schema["description"] = "Present only while the link is unexpired, and never after erasure."
    return schema


def _text(field: Field) -> dict[str, Any]:
    return {"type": "string", "enum": list(field.enum)} if field.enum else {"type": "string"}


def payload_schema(contract: Contract) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Consumers must ignore fields they do not know.",
        "required": [f.name for f in contract.payload if not f.link_secret],
        "properties": {f.name: field_schema(f) for f in contract.payload},
    }


def metadata_schema() -> dict[str, Any]:
    properties: dict[str, Any] = {key: {"type": "string"} for key in METADATA_KEYS}
    for key in PERSONAL_METADATA_KEYS:
        properties[key] = {"type": "string", "x-personal": True, "description": PERSONAL_NOTE}
    properties["trace_id"] = {"type": "string", "description": "32-hex trace id of the originating request."}
    properties["traceparent"] = {"type": "string", "description": "W3C trace context to continue the trace."}
    return {
        "type": "object",
        "description": "Audit metadata (SPEC §9.2); a key without a value is absent.",
        "properties": properties,
        "additionalProperties": {"type": "string"},
    }


def _json_text(description: str, ref: str) -> dict[str, Any]:
    return {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"$ref": ref},
        "description": description,
    }


def entry_schema(contract: Contract) -> dict[str, Any]:
    """The schema of one stream entry of this type: its string fields, and the JSON inside two of them."""
    decimal = {"type": "string", "pattern": DECIMAL_PATTERN}
    properties = {
        "event_id": _uuid("Deterministic UUID v5 of '<aggregate_id>:<aggregate_version>'; deduplicate on it."),
        "event_type": {"const": contract.event_type},
        "user_id": _uuid("The subject user."),
        "aggregate_id": _uuid(f"The {contract.aggregate} aggregate the event belongs to."),
        "aggregate_version": {**decimal, "description": "Version within the aggregate."},
        "position": {**decimal, "description": "Global position; equal to the entry id's first part."},
        "timestamp": _timestamp("When the command was decided."),
        "schema_version": {"const": SCHEMA_VERSION},
        "payload": _json_text("A JSON object.", "#/$defs/payload"),
        "metadata": _json_text("A JSON object of strings.", "#/$defs/metadata"),
    }
    return {
        "$schema": DRAFT,
        "$id": f"{BASE_ID}{contract.event_type}.json",
        "title": contract.event_type,
        "description": contract.description,
        "type": "object",
        "required": list(ENTRY_FIELDS),
        "properties": properties,
        "$defs": {"payload": payload_schema(contract), "metadata": metadata_schema()},
    }


def index_schema() -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": f"{BASE_ID}index.json",
        "title": "pandora-users stream entry",
        "description": "Any entry of the user-service events stream; consumers must ignore unknown event types.",
        "oneOf": [{"$ref": f"{c.event_type}.json"} for c in CONTRACTS],
    }


def render() -> dict[str, str]:
    """Every generated file name and its exact text."""
    files = {f"{c.event_type}.json": entry_schema(c) for c in CONTRACTS}
    files["index.json"] = index_schema()
    return {name: json.dumps(doc, indent=2, ensure_ascii=False) + "\n" for name, doc in files.items()}


def drift(directory: Path = DEFAULT_DIR) -> list[str]:
    """Names of generated files that are missing, different, or no longer generated."""
    expected = render()
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    changed = [n for n, text in expected.items() if n not in present or (directory / n).read_text() != text]
    return sorted(changed + [n for n in present if n not in expected])


def write(directory: Path = DEFAULT_DIR) -> list[str]:
    """Write the schemas, remove stale ones; returns the names that changed."""
    changed = drift(directory)
    directory.mkdir(parents=True, exist_ok=True)
    expected = render()
    for name in changed:
        path = directory / name
        if name in expected:
            path.write_text(expected[name])
        else:
            path.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m projections.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when files have drifted")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    changed = drift(args.dir) if args.check else write(args.dir)
    for name in changed:
        print(f"{'drifted' if args.check else 'wrote'}: {args.dir / name}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())

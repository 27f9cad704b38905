"""The generated JSON Schemas: committed files equal the generator's output, and real entries validate.

`jsonschema` is not a dependency, so a small validator for the subset the generator uses lives here. It
refuses keywords it does not know, so a generator change cannot make validation silently weaker.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pandora_users.domain import events as ev
from projections import schemas
from projections.integration_events import CONTRACTS, to_entry
from tests.unit.given import T0
from tests.unit.test_integration_events import LINK_TYPES, SPEC_PAYLOADS, sample

ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "format", "x-personal", "contentMediaType"}
TYPES: dict[str, Any] = {
    "string": str,
    "object": dict,
    "array": list,
    "null": type(None),
    "integer": int,
}


class Validator:
    """Draft 2020-12, the subset used by `projections.schemas`; `contentSchema` is asserted on JSON text."""

    def __init__(self, documents: dict[str, dict[str, Any]]) -> None:
        self.documents = documents

    def errors(self, instance: Any, name: str) -> list[str]:
        doc = self.documents[name]
        return self._check(instance, doc, doc, "$")

    def _check(self, value: Any, schema: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
        errors: list[str] = []
        for keyword, arg in schema.items():
            if keyword in ANNOTATIONS:
                continue
            check = getattr(self, "_k_" + keyword.lstrip("$"), None)
            if check is None:
                raise AssertionError(f"validator does not know the keyword {keyword!r}")
            errors += check(value, arg, schema, root, path)
        return errors

    def _k_type(self, value: Any, arg: Any, _s: Any, _r: Any, path: str) -> list[str]:
        names = arg if isinstance(arg, list) else [arg]
        ok = any(isinstance(value, TYPES[n]) and not (n == "integer" and isinstance(value, bool)) for n in names)
        return [] if ok else [f"{path}: {value!r} is not of type {arg}"]

    def _k_const(self, value: Any, arg: Any, _s: Any, _r: Any, path: str) -> list[str]:
        return [] if value == arg else [f"{path}: {value!r} != {arg!r}"]

    def _k_enum(self, value: Any, arg: list[Any], _s: Any, _r: Any, path: str) -> list[str]:
        return [] if value in arg else [f"{path}: {value!r} not in {arg}"]

    def _k_pattern(self, value: Any, arg: str, _s: Any, _r: Any, path: str) -> list[str]:
        ok = not isinstance(value, str) or re.search(arg, value)
        return [] if ok else [f"{path}: {value!r} does not match {arg}"]

    def _k_minimum(self, value: Any, arg: int, _s: Any, _r: Any, path: str) -> list[str]:
        return [] if not isinstance(value, int) or value >= arg else [f"{path}: {value} < {arg}"]

    def _k_required(self, value: Any, arg: list[str], _s: Any, _r: Any, path: str) -> list[str]:
        return [f"{path}: missing {k}" for k in arg if isinstance(value, dict) and k not in value]

    def _k_properties(self, value: Any, arg: dict[str, Any], _s: Any, root: Any, path: str) -> list[str]:
        if not isinstance(value, dict):
            return []
        return [e for k, sub in arg.items() if k in value for e in self._check(value[k], sub, root, f"{path}.{k}")]

    def _k_additionalProperties(self, value: Any, arg: Any, schema: Any, root: Any, path: str) -> list[str]:
        if not isinstance(value, dict):
            return []
        extra = [k for k in value if k not in schema.get("properties", {})]
        return [e for k in extra for e in self._check(value[k], arg, root, f"{path}.{k}")]

    def _k_items(self, value: Any, arg: dict[str, Any], _s: Any, root: Any, path: str) -> list[str]:
        if not isinstance(value, list):
            return []
        return [e for i, item in enumerate(value) for e in self._check(item, arg, root, f"{path}[{i}]")]

    def _k_contentSchema(self, value: Any, arg: dict[str, Any], schema: Any, root: Any, path: str) -> list[str]:
        assert schema["contentMediaType"] == "application/json"
        try:
            decoded = json.loads(value)
        except (TypeError, ValueError):
            return [f"{path}: not JSON text"]
        return self._check(decoded, arg, root, path + "<json>")

    def _k_ref(self, value: Any, arg: str, _s: Any, root: dict[str, Any], path: str) -> list[str]:
        document, _, pointer = arg.partition("#")
        target = self.documents[document] if document else root
        sub = target
        for part in filter(None, pointer.split("/")):
            sub = sub[part]
        return self._check(value, sub, target, path)

    def _k_oneOf(self, value: Any, arg: list[dict[str, Any]], _s: Any, root: Any, path: str) -> list[str]:
        matches = sum(not self._check(value, sub, root, path) for sub in arg)
        return [] if matches == 1 else [f"{path}: matches {matches} of oneOf"]


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator({name: json.loads(text) for name, text in schemas.render().items()})


def _entries() -> list[tuple[str, dict[str, str]]]:
    """Mapped entries of every type: live link tokens, expired ones, erased data, missing optional values."""
    found = []
    for event_type in SPEC_PAYLOADS:
        for now in (T0, T0 + timedelta(days=2)):
            entry = to_entry(1042, sample(event_type), now)
            assert entry is not None
            found.append((event_type, entry.fields()))
    personal: dict[str, Any] = {"email": ev.ERASED, "first_name": ev.ERASED, "token": ev.ERASED, "link": ev.ERASED}
    for event_type in LINK_TYPES:
        entry = to_entry(5, sample(event_type, **personal), T0)
        assert entry is not None
        found.append((event_type, entry.fields()))
    entry = to_entry(6, sample("user.logged_in", ip_address=None, user_agent=None), T0)
    assert entry is not None
    found.append(("user.logged_in", entry.fields()))
    return found


def test_committed_schemas_match_the_generator() -> None:
    assert schemas.drift() == [], "schema/events drifted: run `python -m projections.schemas`"
    names = {p.name for p in schemas.DEFAULT_DIR.glob("*.json")}
    assert names == {f"{c.event_type}.json" for c in CONTRACTS} | {"index.json"}


def test_drift_is_detected(tmp_path: Path) -> None:
    assert schemas.write(tmp_path) == sorted(schemas.render())
    assert schemas.drift(tmp_path) == []
    (tmp_path / "user.erased.json").write_text("{}\n")
    (tmp_path / "user.gone.json").write_text("{}\n")
    (tmp_path / "user.locked.json").unlink()
    assert schemas.drift(tmp_path) == ["user.erased.json", "user.gone.json", "user.locked.json"]
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1
    assert schemas.main(["--dir", str(tmp_path)]) == 0
    assert schemas.drift(tmp_path) == []


def test_every_schema_is_draft_2020_12_with_its_type(validator: Validator) -> None:
    for contract in CONTRACTS:
        doc = validator.documents[f"{contract.event_type}.json"]
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert doc["properties"]["event_type"] == {"const": contract.event_type}
        assert tuple(doc["$defs"]["payload"]["properties"]) == SPEC_PAYLOADS[contract.event_type]


def test_mapped_entries_validate_against_their_schema_and_the_index(validator: Validator) -> None:
    for event_type, fields in _entries():
        assert validator.errors(fields, f"{event_type}.json") == [], event_type
        assert validator.errors(fields, "index.json") == [], event_type


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("timestamp", lambda f: f.replace("T", " ")),
        ("aggregate_version", lambda f: "04"),
        ("schema_version", lambda f: "2"),
        ("payload", lambda f: json.dumps({k: v for k, v in json.loads(f).items() if k != "kyc_status"})),
        ("payload", lambda f: json.dumps({**json.loads(f), "role": "root"})),
        ("payload", lambda f: "not json"),
        ("metadata", lambda f: json.dumps({"actor_id": 7})),
        ("event_id", lambda f: f.upper()),
    ],
)
def test_broken_entries_are_rejected(validator: Validator, field: str, change: Any) -> None:
    entry = to_entry(9, sample("user.registered"), T0)
    assert entry is not None
    fields = entry.fields()
    fields[field] = change(fields[field])
    assert validator.errors(fields, "user.registered.json")
    assert validator.errors(fields, "index.json")


def test_a_wrong_event_type_fails_its_schema(validator: Validator) -> None:
    entry = to_entry(9, sample("user.deleted"), T0)
    assert entry is not None
    wrong = msgspec.structs.replace(entry, event_type="user.restored")
    assert validator.errors(wrong.fields(), "user.deleted.json")
    assert validator.errors(wrong.fields(), "index.json")  # user.restored's payload wants restored_at

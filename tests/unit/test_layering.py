"""The import rules of STYLE.md: the domain stays pure, and only the composition root knows the edges."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION_ROOT = {"bootstrap.py", "serve.py", "cli.py", "commands_cli.py", "audit_cli.py", "workers.py"}
EDGES = ("api", "rpc", "projections")


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_domain_imports_only_stdlib_msgspec_and_eventsourcing() -> None:
    allowed = set(sys.stdlib_module_names) | {"msgspec", "eventsourcing", "pandora_users"}
    for path in (ROOT / "pandora_users" / "domain").glob("*.py"):
        for module in imports_of(path):
            top = module.split(".")[0]
            assert top in allowed, f"{path.name} imports {module}"
            if top == "pandora_users":
                assert module.startswith("pandora_users.domain"), f"{path.name} imports {module}"


def test_core_never_imports_the_edges() -> None:
    for path in (ROOT / "pandora_users").rglob("*.py"):
        if path.name in COMPOSITION_ROOT and path.parent.name == "pandora_users":
            continue
        for module in imports_of(path):
            assert module.split(".")[0] not in EDGES, f"{path.relative_to(ROOT)} imports {module}"


def test_rules_see_real_files() -> None:
    assert len(list((ROOT / "pandora_users" / "domain").glob("*.py"))) >= 7

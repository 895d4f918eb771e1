"""Each package owns its room: the leaf services never import each other or telemed."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEAVES = ("signaling", "recorder", "emr_bridge")
FORBIDDEN_FOR_LEAVES = {*LEAVES, "telemed"}


def imported_top_levels(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_leaf_packages_import_neither_siblings_nor_the_application() -> None:
    violations = []
    for leaf in LEAVES:
        for path in (ROOT / leaf).rglob("*.py") if (ROOT / leaf).is_dir() else ():
            for name in imported_top_levels(path) & (FORBIDDEN_FOR_LEAVES - {leaf}):
                violations.append(f"{path.relative_to(ROOT)} imports {name}")
    assert violations == []


def test_signaling_knows_nothing_of_databases_or_tokens() -> None:
    for path in (ROOT / "signaling").rglob("*.py"):
        assert not imported_top_levels(path) & {"sqlalchemy", "jwt", "aiortc", "boto3"}, path

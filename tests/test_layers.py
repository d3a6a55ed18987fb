"""The layer map of docs/architecture.md, checked on the source: ``broker/`` is the library and
imports neither ``consumers/`` nor ``api/`` (the process entry points), except the CLI, which is
an entry point itself and starts the stages."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.data import REPO_ROOT

ENTRY_POINTS = ("consumers", "api")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_library_imports_no_entry_point() -> None:
    broker = REPO_ROOT / "broker"
    found = {}
    for path in sorted(broker.rglob("*.py")):
        relative = path.relative_to(REPO_ROOT)
        if relative.parts[:2] == ("broker", "cli"):
            continue
        wrong = {name for name in _imports(path) if name.split(".")[0] in ENTRY_POINTS}
        if wrong:
            found[str(relative)] = sorted(wrong)
    assert found == {}

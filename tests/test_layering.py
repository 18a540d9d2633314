"""The pure core imports no I/O: protocol/ and blocks/ work on bytes and values only.

Like trio's layering test: the rule from docs/design.md, enforced.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "standby"
PURE = ["protocol", "blocks"]
FORBIDDEN_MODULES = {"asyncio", "socket", "ssl", "os", "io", "pathlib", "shutil", "fastapi",
                     "httpx", "sqlite3", "subprocess", "threading", "select", "selectors"}
FORBIDDEN_PACKAGES = {"standby.engine", "standby.storage", "standby.replica", "standby.api",
                      "standby.cli"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-node.level]
                names.append(".".join([*parts, node.module] if node.module else parts))
            elif node.module:
                names.append(node.module)
    return names


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_do_no_io(package: str) -> None:
    """No module of the pure core imports an I/O module or an I/O layer of standby."""
    offenders = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FORBIDDEN_MODULES or any(name.startswith(p) for p in FORBIDDEN_PACKAGES):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert offenders == []

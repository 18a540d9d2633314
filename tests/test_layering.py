"""The pure core imports no I/O: protocol/ and blocks/ work on bytes and values only, and the
HA decision (ha/_model.py, ha/_actions.py, ha/_decide.py) on values only.

Like trio's layering test: the rule from docs/design.md, enforced.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "standby"
PURE = ["protocol", "blocks", "ha/_model.py", "ha/_actions.py", "ha/_decide.py"]
FORBIDDEN_MODULES = {"asyncio", "socket", "ssl", "os", "io", "pathlib", "shutil", "fastapi",
                     "httpx", "sqlite3", "subprocess", "threading", "select", "selectors"}
FORBIDDEN_PACKAGES = {"standby.engine", "standby.storage", "standby.replica", "standby.api",
                      "standby.cli"}
#: The HA decision may import only its own pure siblings from standby.ha: the checks, workloads,
#: redirections and arbiters next to it do I/O.
HA_PURE = {"standby.ha._model", "standby.ha._actions", "standby.ha._decide"}


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


def _forbidden(name: str) -> bool:
    if name.split(".")[0] in FORBIDDEN_MODULES:
        return True
    if any(name.startswith(package) for package in FORBIDDEN_PACKAGES):
        return True
    return name.startswith("standby.ha") and name not in HA_PURE


@pytest.mark.parametrize("part", PURE)
def test_pure_packages_do_no_io(part: str) -> None:
    """No module of the pure core imports an I/O module or an I/O layer of standby."""
    root = PACKAGE / part
    paths = sorted(root.rglob("*.py")) if root.is_dir() else [root]
    assert paths
    offenders = [f"{path.relative_to(PACKAGE)} imports {name}"
                 for path in paths for name in _imports(path) if _forbidden(name)]
    assert offenders == []

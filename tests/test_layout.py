"""The code's layers, checked from the source: ``steering_core`` (the science) never
imports ``bridge``; in ``bridge``, the live server (``bridge/live``) never imports the
offline tools (``bridge/tools``), so nothing the server runs can pull in an analysis or
a plot, and the tools reuse the server's own code paths (replay drives the real
commands), never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def offenders(folder: str, forbidden: str) -> list[str]:
    return sorted(f"{path.relative_to(REPO)} imports {name}"
                  for path in (REPO / folder).rglob("*.py")
                  for name in imported_modules(path) if name == forbidden or name.startswith(forbidden + "."))


def test_the_import_resolver_sees_relative_imports() -> None:
    assert "bridge.live.control" in imported_modules(REPO / "bridge/live/engine.py")
    assert "bridge.live.commands" in imported_modules(REPO / "bridge/tools/replay.py")


def test_steering_core_never_imports_bridge() -> None:
    assert offenders("steering_core", "bridge") == []


def test_the_live_server_never_imports_the_offline_tools() -> None:
    assert offenders("bridge/live", "bridge.tools") == []


def test_bridge_has_only_the_entry_point_at_its_top() -> None:
    top = sorted(p.name for p in (REPO / "bridge").glob("*.py"))
    assert top == ["__init__.py", "cli.py"], top

"""The code's layers, checked from the source: ``steering_core`` (the science) never
imports ``bridge``; in ``bridge``, the live server (``bridge/live``) never imports the
offline tools (``bridge/tools``), so nothing the server runs can pull in an analysis or
a plot, and the tools reuse the server's own code paths (replay drives the real
commands), never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("steering_core", "bridge")
MAX_MODULE_LINES = 450


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks (imports there never run)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                todo.extend(child.orelse)
            else:
                todo.append(child)
    return out


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports at run time (``TYPE_CHECKING`` blocks
    left out), relative imports resolved. ``from a import b`` yields ``a`` and ``a.b``."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(REPO).parts[:-1])
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
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


def project_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of ``steering_core`` and ``bridge``."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports at run time (a name imported from a package
    counts as the submodule when there is one, else as the package)."""
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (an iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_type_checking_imports_are_not_run_time_edges(tmp_path) -> None:
    module = REPO / "steering_core" / "codec" / "streaming.py"
    assert "steering_core.model.loading" not in imported_modules(module)  # imported for annotations only
    assert "steering_core.codec.encodec_walk" in imported_modules(module)


def test_no_import_cycle_among_the_project_modules() -> None:
    cycle = find_cycle(import_graph(project_modules()))
    assert cycle is None, " -> ".join(cycle or [])


def test_no_module_is_too_long_to_read() -> None:
    long = sorted(f"{path.relative_to(REPO)}: {n} lines" for path in project_modules().values()
                  if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES)
    assert long == []


def test_steering_core_keeps_a_handful_of_modules_at_its_top() -> None:
    """The rest live in sub-packages by role (model, codec, steer, extract, stream, evaluate, toy)."""
    top = sorted(p.name for p in (REPO / "steering_core").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 6, top
    for package in sorted(p for p in (REPO / "steering_core").iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and "\n" not in doc.strip(), f"{package.name}/__init__.py needs a one-line purpose"


def test_bridge_has_only_the_entry_point_at_its_top() -> None:
    """``bridge/`` holds ``__init__.py`` and four packages: ``cli`` (the entry point), ``clock``, ``live``, ``tools``."""
    top = sorted(p.name for p in (REPO / "bridge").iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file())
    assert top == ["__init__.py", "cli", "clock", "live", "tools"], top

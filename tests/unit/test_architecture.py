"""The source tree's layers: imports only go downwards, and no module imports itself through others.

Every ``import`` in ``chatbot/`` (also those inside functions) is read with ``ast``; see ARCHITECTURE.md
for the layers. Run: ``.venv/bin/python -m pytest tests/unit/test_architecture.py -q``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "chatbot"

# What each layer may import, besides itself and the shared base modules.
ALLOWED = {
    "model": set(),
    "authoring": {"model"},
    "engine": {"model"},
    "chat": {"engine", "model"},
    "serve": {"chat", "engine", "model", "authoring"},
    "cli": {"serve", "chat", "engine", "model", "authoring"},
}
BASE = {"chatbot.errors", "chatbot.settings"}  # used by every layer, import nothing of ours
FACADE = {"chatbot", "chatbot.__main__"}  # the public surface: re-exports from any layer


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``name`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "chatbot")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.split(".")[0] == "chatbot":
                target = node.module
            else:
                continue
            # `from ..model import fp8` imports the module chatbot.model.fp8
            submodules = {f"{target}.{alias.name}" for alias in node.names} & known
            found.update(submodules or {target})
    return found & known


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_modules(name, path, set(modules)) - {name} for name, path in modules.items()}


def test_every_module_belongs_to_a_layer_or_the_base() -> None:
    loose = [name for name in all_modules() if layer(name) is None and name not in BASE | FACADE]
    assert not loose, f"modules outside the layers {sorted(ALLOWED)}: {loose}"


def test_imports_only_go_downwards() -> None:
    upwards = []
    for name, targets in import_graph().items():
        if name in FACADE:
            continue
        source = layer(name)
        for target in targets:
            if name in BASE:
                upwards.append(f"{name} -> {target} (base modules import nothing of ours)")
            elif target in BASE or layer(target) == source:
                continue
            elif layer(target) not in ALLOWED[source] or target in FACADE:
                upwards.append(f"{name} ({source}) -> {target} ({layer(target) or 'facade'})")
    assert not upwards, "imports against the layering:\n" + "\n".join(sorted(upwards))


def test_no_import_circle() -> None:
    graph = import_graph()
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state and node not in FACADE:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rules catch what they are for: an engine module importing the web UI, a circle."""
    source = tmp_path / "chatbot" / "engine" / "bad.py"
    source.parent.mkdir(parents=True)
    source.write_text("from ..serve import ui\nfrom chatbot.chat.reply import stream_reply\n")
    known = {"chatbot.serve.ui", "chatbot.chat.reply", "chatbot.engine.bad"}
    found = imported_modules("chatbot.engine.bad", source, known)
    assert found == {"chatbot.serve.ui", "chatbot.chat.reply"}
    assert all(layer(target) not in ALLOWED["engine"] for target in found)

"""The layout a reviewer checks: no import loop between the agent's modules, and nothing
imports the orchestrator (agent.runtime) to borrow a helper from it.

Read from the source with `ast`, so the test sees what a reader of the code sees: module-level
imports, including those under `if TYPE_CHECKING:` (a loop there is still a loop in the design).
"""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[1] / "agent"


def _module_name(path: Path) -> str:
    parts = path.relative_to(AGENT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, *, anywhere: bool) -> set[str]:
    nodes: list[ast.AST] = []
    for node in tree.body if not anywhere else [tree]:
        nodes.extend(ast.walk(node) if anywhere or isinstance(node, ast.If | ast.Try) else [node])
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def import_graph(*, anywhere: bool = False) -> dict[str, set[str]]:
    trees = {_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in AGENT.rglob("*.py")}
    return {
        name: {dep for dep in _imports(tree, anywhere=anywhere) if dep in trees and dep != name}
        for name, tree in trees.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep, path)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_no_import_loop_between_the_agents_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import loop: " + " -> ".join(cycle or [])


def test_only_what_runs_the_agent_imports_the_orchestrator() -> None:
    importers = sorted(
        name
        for name, deps in import_graph(anywhere=True).items()
        if "agent.runtime" in deps and name != "agent.runtime"
    )
    # The command line and the tray start an Agent; everything else gets its parts from the
    # assembly (agent.assembly) or the pipeline core.
    assert importers == ["agent.cli", "agent.tray"]


def test_the_settings_import_neither_logging_nor_the_runtime() -> None:
    graph = import_graph(anywhere=True)
    assert not graph["agent.logs"] & {"agent.config", "agent.paths"}
    assert "agent.runtime" not in graph["agent.config"]
    assert "agent.assembly" not in graph["agent.config"]

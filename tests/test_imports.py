"""core/ is a plain library: no import cycles between its modules (lazy imports inside functions count too), and
importing any of them in a fresh interpreter works and never pulls in gradio."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"


def _runtime_nodes(tree: ast.AST):
    """Every node, minus the bodies of `if TYPE_CHECKING:` blocks (imports for type hints only never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def core_imports(path: Path) -> set[str]:
    """The core modules that `path` imports when it runs, at the top or inside functions."""
    modules = {p.stem for p in CORE.glob("*.py")}
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                base = node.module or ""
                names = [base] if base else [a.name for a in node.names]
                names = [f"core.{n}" for n in names]
            elif node.module == "core":  # from core import runs
                names = [f"core.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "core" and len(parts) > 1 and parts[1] in modules:
                found.add(parts[1])
    found.discard(path.stem)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None. Depth-first search with colours."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_reads_lazy_relative_and_type_checking_imports(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text("from typing import TYPE_CHECKING\nfrom .errors import MaskLensError\nfrom core import runs\n"
                 "if TYPE_CHECKING:\n    from .engine import MaskConfig\n"
                 "def f():\n    import core.train\n    from . import models\n")
    assert core_imports(f) == {"errors", "runs", "train", "models"}


def test_core_has_no_import_cycle():
    graph = {p.stem: core_imports(p) for p in CORE.glob("*.py")}
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle in core/: {' -> '.join(cycle)}"
    assert "runs" not in graph["train"], "core.train must not import core.runs (core.run_child joins them)"


def test_every_core_module_imports_alone_without_gradio():
    names = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__main__")
    script = (
        "import importlib, json, sys\n"
        f"bad = {{}}\n"
        f"for n in {names!r}:\n"
        "    try:\n"
        "        importlib.import_module('core.' + n)\n"
        "    except Exception as e:\n"
        "        bad[n] = repr(e)\n"
        "print(json.dumps({'bad': bad, 'gradio': 'gradio' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bad"] == {}, result["bad"]
    assert result["gradio"] is False, "a core module imports gradio"

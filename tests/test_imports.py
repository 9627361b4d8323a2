"""core/ and app/ are layered: no import cycle among their modules (lazy imports inside functions count too), and
importing any core module in a fresh interpreter works and never pulls in gradio."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "app")


def module_name(path: Path) -> str:
    """core/masking/engine.py -> "core.masking.engine"; core/masking/__init__.py -> "core.masking"."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, modules: set[str], name: str | None = None) -> set[str]:
    """The project modules `path` imports: at the top, inside functions or for type hints (relative imports resolved)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):  # type-only imports count: a cycle is a cycle
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` imports mod
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # core.masking.engine.X -> core.masking.engine
                t = t.rpartition(".")[0]
            if t:
                found.add(t)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = all_modules()
    return {name: imports_of(p, set(mods), name) for name, p in mods.items()}


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


def test_import_graph_reads_lazy_relative_and_type_only_imports(tmp_path):
    pkg = tmp_path / "core" / "masking"
    pkg.mkdir(parents=True)
    f = pkg / "probe.py"
    f.write_text("from typing import TYPE_CHECKING\nfrom ..errors import MaskLensError\nfrom core.training import runs\n"
                 "if TYPE_CHECKING:\n    from .engine import MaskConfig\n"
                 "def f():\n    import core.training.train\n    from . import labels\n    from .. import models\n")
    modules = {"core", "core.errors", "core.models", "core.masking", "core.masking.engine", "core.masking.labels",
               "core.training", "core.training.runs", "core.training.train", "core.masking.probe"}
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        found = imports_of(f, modules)
    finally:
        ROOT = old
    assert found == {"core.errors", "core.training.runs", "core.training.train", "core.masking.labels", "core.models",
                     "core.masking.engine"}


def test_no_import_cycle_in_core_or_app():
    graph = import_graph()
    assert "app.tab_inspect" in graph and "core.masking.engine" in graph, sorted(graph)
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_layers():
    """core never imports app; the data layer never imports masking or training; masking never imports training;
    core.training.train never imports core.training.runs (core.training.run_child joins them)."""
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("core"):
            assert not any(d.startswith("app") for d in deps), (mod, deps)
        if mod.startswith("core.data"):
            assert not any(d.startswith(("core.masking", "core.training")) for d in deps), (mod, deps)
        if mod.startswith("core.masking"):
            assert not any(d.startswith("core.training") for d in deps), (mod, deps)
    assert "core.training.runs" not in graph["core.training.train"]


def test_every_core_module_imports_alone_without_gradio():
    names = sorted(n for n in all_modules() if n.startswith("core") and not n.endswith("__main__"))
    script = (
        "import importlib, json, sys\n"
        f"bad = {{}}\n"
        f"for n in {names!r}:\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except Exception as e:\n"
        "        bad[n] = repr(e)\n"
        "print(json.dumps({'bad': bad, 'gradio': 'gradio' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bad"] == {}, result["bad"]
    assert result["gradio"] is False, "a core module imports gradio"

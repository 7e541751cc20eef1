"""The package's shape: no import cycle, inference without the training engine, one copy of the
detector pass and of the cascade score, benchmarks that import without editing sys.path."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "limbscan"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str], lazy: bool = True) -> set[str]:
    """Every limbscan module ``path`` imports, at module level or inside a function (an import in
    a function still runs, later), less ``if TYPE_CHECKING`` blocks; ``import a.b.c`` also runs
    ``a.b``'s ``__init__``, except where ``a.b`` holds the importing module (Python has started
    that one before it)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if not lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            targets = []
        for target in targets:
            while target:
                if target in modules and target != name and target not in own:
                    found.add(target)
                target = target.rpartition(".")[0]
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _graph(lazy: bool = True) -> dict[str, set[str]]:
    """Module -> the limbscan modules it imports; ``lazy`` False: only those its import runs."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, modules, lazy) for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert len(graph) > 40 and "limbscan.scenarios.cascade" in graph  # the walk found the package
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_walk_would_see_a_cycle():
    # The checker itself: a cycle through a function-level import is found.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_importing_inference_loads_neither_training_nor_evaluation():
    graph = _graph(lazy=False)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for start in ("limbscan.inference", "limbscan.serve.api", "limbscan.scenarios.base", "limbscan.predict"):
        assert not {m for m in reach(start) if m.startswith(("limbscan.train", "limbscan.eval"))}, start
    assert not {m for m in reach("limbscan.scenarios.scoring") if m.startswith("limbscan.train")}


def test_load_predict_and_serve_leave_the_training_engine_unimported(tiny_run, tmp_path):
    from limbscan.bundle import export_bundle

    _, run = tiny_run
    bundle = export_bundle(run, tmp_path / "m.limbscan")
    script = f"""
import json, sys
import numpy as np
import limbscan
from limbscan.serve import create_app
model = limbscan.load({str(bundle)!r})
model.predict([np.random.default_rng(0).random((90, 70)).astype("float32")], scenario="all")
create_app({str(bundle)!r})
print(json.dumps(sorted(m for m in sys.modules if m.startswith("limbscan."))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "limbscan.scenarios.cascade" in loaded and "limbscan.serve.api" in loaded  # it did score and serve
    assert not [m for m in loaded if m.startswith(("limbscan.train", "limbscan.eval", "limbscan.data.augment"))]


def _calls(path: Path, attribute: str) -> int:
    tree = ast.parse(path.read_text())
    return sum(
        1 for node in ast.walk(tree)
        if isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == attribute)
            or (isinstance(node.func, ast.Name) and node.func.id == attribute))
    )


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted(BENCHMARKS.rglob("*.py"))


@pytest.mark.parametrize(
    ("what", "home"),
    [
        # the steps of Mask R-CNN's forward without its mask head: the one detector pass
        ("postprocess_detections", "limbscan/models/detector.py"),
        ("box_roi_pool", "limbscan/models/detector.py"),
        # the detector pass and the cascade's score are called where they are defined, and by no copy
        ("cascade_score", "limbscan/scenarios/cascade.py"),
        ("crop_box", None),
    ],
)
def test_one_copy_of_the_detector_pass_and_of_the_cascade_score(what, home):
    callers = {str(p.relative_to(BENCHMARKS.parent if p.is_relative_to(BENCHMARKS) else SRC)): _calls(p, what)
               for p in _sources()}
    callers = {k: v for k, v in callers.items() if v}
    if home is None:  # THE crop: cut by the cascade and by the training crops, nowhere else
        assert set(callers) <= {"limbscan/scenarios/cascade.py", "limbscan/data/datasets.py"}, callers
    else:
        assert set(callers) == {home}, callers


_PATH_EDIT = re.compile(r"\bsys\.path\s*(\.\s*(insert|append|extend|remove|pop|clear)\b|\[[^\]]*\]\s*=(?!=)|\+?=[^=])"
                        r"|\bsite\.addsitedir\b|\bfrom\s+sys\s+import\b[^\n]*\bpath\b")


def _path_edits(path: Path) -> list[str]:
    """The lines of ``path`` that change ``sys.path`` (Python, or Python inside a shell script)."""
    if path.suffix == ".py":
        lines = []
        for node in ast.walk(ast.parse(path.read_text())):
            target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AugAssign) else []
            targets = [t.value if isinstance(t, ast.Subscript) else t for t in targets]
            if any(ast.unparse(t) == "sys.path" for t in [target, *targets] if t is not None) or (
                    isinstance(node, ast.Call) and ast.unparse(node.func) == "site.addsitedir") or (
                    isinstance(node, ast.ImportFrom) and node.module == "sys"
                    and any(a.name == "path" for a in node.names)):
                lines.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        return lines
    return [f"{path.name}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
            if _PATH_EDIT.search(line)]


def test_no_benchmark_edits_sys_path():
    # The benchmarks are a package run as `python -m benchmarks.NAME`: they import one another
    # (and limbscan) as installed, never by pointing sys.path at a folder.
    files = [p for p in BENCHMARKS.rglob("*") if p.is_file() and p.suffix in (".py", ".sh")]
    assert BENCHMARKS / "inference.py" in files and BENCHMARKS / "cv" / "cv_pairs.py" in files  # the walk found them
    edits = [line for p in files for line in _path_edits(p)]
    assert not edits, edits


@pytest.mark.parametrize("source", [
    "import sys\nsys.path.insert(0, 'x')\n", "import sys\nsys.path.append('x')\n", "import sys\nsys.path += ['x']\n",
    "import sys\nsys.path[:0] = ['x']\n", "import sys\nsys.path = ['x']\n", "import site\nsite.addsitedir('x')\n",
    "from sys import path\npath.insert(0, 'x')\n",
])
def test_the_sys_path_check_would_see_an_edit(tmp_path, source):
    for name, text in (("a.py", source), ("a.sh", f"python - <<'PY'\n{source}PY\n")):
        (tmp_path / name).write_text(text)
        assert _path_edits(tmp_path / name), (name, source)
    reading = "import sys\nprint(sys.path, sys.path[0] == 'x', sys.path == [])\n"
    for name, text in (("b.py", reading), ("b.sh", f"python - <<'PY'\n{reading}PY\n")):
        (tmp_path / name).write_text(text)
        assert not _path_edits(tmp_path / name), name

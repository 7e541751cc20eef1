"""The package's shape: no import cycle, imports that run down one table of layers (training
above the scenarios, never below), inference without the training engine, one copy of the
detector pass and of the cascade score, benchmarks that import without editing sys.path,
docstrings of a few lines and source files of at most 500."""

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


def _imports(path: Path, modules: set[str], lazy: bool = True, typing: bool = False) -> set[str]:
    """Every limbscan module ``path`` imports, at module level or inside a function (an import in
    a function still runs, later), less ``if TYPE_CHECKING`` blocks (``typing``: with them);
    ``import a.b.c`` also runs ``a.b``'s ``__init__``, except where ``a.b`` holds the importing
    module (Python has started that one before it)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if not lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        if isinstance(node, ast.If) and _is_type_checking(node) and not typing:
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


def _graph(lazy: bool = True, typing: bool = False) -> dict[str, set[str]]:
    """Module -> the limbscan modules it imports; ``lazy`` False: only those its import runs;
    ``typing``: those imported for type checking too."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, modules, lazy, typing) for name, path in files.items()}


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


# The layering rule, bottom layer first. A unit is a package or top-level module of limbscan
# ("scenarios", "rundir"), a module named apart from its package ("eval.metrics"), or a package's
# own __init__ ("scenarios.__init__"); a module belongs to the most specific unit that names it.
# A module may import modules of its own unit and of units in LOWER layers only: never upwards,
# and never sideways (units of one layer know nothing of each other). Function-level imports
# count; `if TYPE_CHECKING` ones do not (they never run).
LAYERS: list[tuple[str, ...]] = [
    ("errors", "utils"),
    # Leaves that lower layers read, apart from their packages: the torch-free table of scenario
    # names (config, the run folder and the model loader check names against it), the detector's
    # label ids (every DataLoader worker's), the metrics (operating points choose thresholds with them).
    # The shipped model's path (pretrained) too.
    ("scenarios.__init__", "models.labels", "eval.metrics", "pretrained"),
    ("models.__init__", "eval.__init__"),  # light package faces: each imports only its leaf above
    ("config", "operating_points"),
    ("rundir", "io"),
    ("data",),
    ("models",),
    ("scenarios", "gate"),  # how each scenario scores; the input gate
    ("explain", "overlay"),  # Grad-CAM through a scenario; drawing findings
    ("localise",),
    ("train",),  # the engine and every scenario's stage: it asks the scenarios, they never ask it
    ("bundle",),  # export (re-saves checkpoints with train's writer) and reading
    ("inference",),  # limbscan.load -> Predictor
    # One image through a Predictor (predict, serve, listen); measuring a run or bundle through
    # what predict gives, and `limbscan benchmark` (train, export, evaluate).
    ("analysis", "eval"),
    ("predict", "serve"),
    ("node",),  # `limbscan listen`: predicts what a PACS sends
    ("cli", "__init__"),  # the commands; `limbscan` itself (load and export_bundle, on first use)
]

# (importer, imported) edges that break the layers today, each with why it is tolerated and what
# would remove it. None at present: an edge added here must say both, and one that no longer
# exists must be taken out (the test fails on it).
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _unit_of(module: str, packages: set[str]) -> str | None:
    """The unit of LAYERS ``module`` belongs to (None where the table names none)."""
    units = {unit for layer in LAYERS for unit in layer}
    rel = module.removeprefix("limbscan").removeprefix(".")
    if module in packages and f"{rel}.__init__".removeprefix(".") in units:
        return f"{rel}.__init__".removeprefix(".")
    while rel:
        if rel in units:
            return rel
        rel = rel.rpartition(".")[0]
    return None


def _layer_breaches(graph: dict[str, set[str]]) -> tuple[list[str], list[str]]:
    """(every module the table places nowhere, every import that runs sideways or upwards)."""
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    packages = {m.rpartition(".")[0] for m in graph if "." in m} & set(graph)
    unplaced = sorted(m for m in graph if _unit_of(m, packages) is None)
    breaches = []
    for importer, imported in sorted((a, b) for a, targets in graph.items() for b in targets):
        ua, ub = _unit_of(importer, packages), _unit_of(imported, packages)
        if ua and ub and ua != ub and layer[ub] >= layer[ua] and (importer, imported) not in KNOWN_EXCEPTIONS:
            breaches.append(f"{importer} ({ua}, layer {layer[ua]}) imports {imported} ({ub}, layer {layer[ub]})")
    return unplaced, breaches


def test_imports_run_down_the_layers():
    graph = _graph()
    units = [unit for layer in LAYERS for unit in layer]
    assert len(units) == len(set(units)), "a unit is in two layers"
    unplaced, breaches = _layer_breaches(graph)
    assert not unplaced, f"place these in LAYERS: {unplaced}"
    assert not breaches, "\n".join(breaches)
    stale = [edge for edge in KNOWN_EXCEPTIONS if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"no longer imported, take out of KNOWN_EXCEPTIONS: {stale}"


def test_the_layer_check_would_see_a_breach():
    # The checker itself: a scenario importing training (upwards), a gate importing a scenario
    # (sideways) and a module the table does not place are each reported.
    graph = {"limbscan.scenarios.fused": {"limbscan.train.stages.fused", "limbscan.scenarios"},
             "limbscan.train.stages.fused": {"limbscan.scenarios.fused"}, "limbscan.train.stages": set(),
             "limbscan.scenarios": set(), "limbscan.gate.model": {"limbscan.scenarios.base"},
             "limbscan.scenarios.base": set(), "limbscan.newthing": set()}
    unplaced, breaches = _layer_breaches(graph)
    assert unplaced == ["limbscan.newthing"]
    assert [b.split(" (")[0] for b in breaches] == ["limbscan.gate.model", "limbscan.scenarios.fused"]
    assert "imports limbscan.train.stages.fused (train" in breaches[1]


def test_no_scenario_module_imports_or_names_training():
    # How a scenario scores is asked by its training stage; the scenario never names the stage:
    # no import of limbscan.train, at module level, in a function or for type checking alone.
    graph = _graph(typing=True)
    scenario_modules = [m for m in graph if m == "limbscan.scenarios" or m.startswith("limbscan.scenarios.")]
    assert "limbscan.scenarios.cascade" in scenario_modules and "limbscan.scenarios.fused" in scenario_modules
    imports = {m: sorted(t for t in graph[m] if t == "limbscan.train" or t.startswith("limbscan.train."))
               for m in scenario_modules}
    assert not {m: t for m, t in imports.items() if t}, imports
    named = [str(p.relative_to(SRC)) for p in (PACKAGE / "scenarios").rglob("*.py") if "limbscan.train" in p.read_text()]
    assert not named, named


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


# A docstring says what a module, class or function is for and how to call it, in a few lines;
# a specification, its history and its measurements belong in docs/. Each entry below is over
# the limit today and says why; one that is no longer over it must be taken out (the test fails).
MAX_DOCSTRING_LINES = 9
LONG_DOCSTRINGS: dict[str, str] = {}
MAX_FILE_LINES = 500


def _docstring_lines(path: Path) -> dict[str, int]:
    """Lines of every docstring in ``path`` (as the source spells it, quotes included), by name:
    the module as ``path``, a class or function as ``path::name``."""
    rel = str(path.relative_to(SRC)) if path.is_relative_to(SRC) else path.name
    found = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(
                node) is not None:
            first = node.body[0]
            name = rel if isinstance(node, ast.Module) else f"{rel}::{node.name}"
            found[name] = max(found.get(name, 0), first.end_lineno - first.lineno + 1)
    return found


def test_docstrings_are_a_few_lines():
    lengths = {name: n for p in sorted(PACKAGE.rglob("*.py")) for name, n in _docstring_lines(p).items()}
    assert "limbscan/scenarios/cascade.py" in lengths  # the walk found the package
    long = {name: n for name, n in lengths.items() if n > MAX_DOCSTRING_LINES}
    unexplained = {name: n for name, n in long.items() if name not in LONG_DOCSTRINGS}
    assert not unexplained, f"docstrings over {MAX_DOCSTRING_LINES} lines (move the detail to docs/): {unexplained}"
    stale = [name for name in LONG_DOCSTRINGS if name not in long]
    assert not stale, f"no longer over the limit, take out of LONG_DOCSTRINGS: {stale}"


def test_the_docstring_check_counts_module_class_and_function_docstrings(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('"""One line."""\n\n\nclass A:\n    """Two\n    lines."""\n\n    def f(self):\n'
                    '        """Three\n\n        lines.\n        """\n')
    assert _docstring_lines(path) == {"m.py": 1, "m.py::A": 2, "m.py::f": 4}


def test_no_source_file_is_longer_than_the_limit():
    lengths = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert len(lengths) > 40
    long = {name: n for name, n in lengths.items() if n > MAX_FILE_LINES}
    assert not long, f"split these by job: {long}"

"""The package's import structure: no cycles, and a light import for the command line.

``import timm_tricks`` must not load torch or timm (the command line's ``--help``, ``recipes``, ``recipes show`` and
``keys`` answer without them), yet ``timm.create_model('resnet50d_tricks')`` must work right after it, whichever of
timm and timm_tricks is imported first. Each check runs in a fresh interpreter, since this one has imported both
already.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "timm_tricks"
HEAVY = ("torch", "timm", "numpy", "ray", "accelerate", "matplotlib")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, also those inside functions (lazy imports) and under ``TYPE_CHECKING``."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a ``from . import name`` of a submodule names the submodule)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")
                base = base[:len(base) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names]
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_import_graph_finds_relative_and_lazy_imports():
    graph = import_graph()
    assert "timm_tricks.schema" in graph["timm_tricks.config"]
    assert "timm_tricks.models" in graph["timm_tricks.config"]  # lazy, inside _check_names
    assert "timm_tricks.choices" in graph["timm_tricks.models.resnet_tricks"]  # from ..choices
    assert "timm_tricks.train" in graph["timm_tricks.experiment"]  # under TYPE_CHECKING, still an edge
    plain = ("optim", "schedule", "losses", "mixup", "tta", "batches", "augment", "color", "batch_augment", "draws")
    assert [m for m in plain if "timm_tricks.config" in graph[f"timm_tricks.{m}"]] == []  # build.py reads configs
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """A function's parameter names, without ``self``/``cls`` (``*args``/``**kwargs`` count as one each)."""
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
    return [n for n in names if n not in ("self", "cls")]


def test_no_function_takes_more_than_eight_parameters():
    # The model constructors are left out: they follow timm's idiom, one keyword per architecture option, which
    # timm.create_model(name, **kwargs) passes through (timm's own ResNet.__init__ takes over 20).
    wide = {f"{_module_name(path)}.{node.name}": len(_parameters(node))
            for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and len(_parameters(node)) > 8}
    models = {name for name in wide if name.startswith("timm_tricks.models.") and name.endswith(".__init__")}
    assert "timm_tricks.models.wider_resnet.__init__" in models  # the check sees a model constructor's keywords
    assert {name: n for name, n in wide.items() if name not in models} == {}


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["recipes"], ["recipes", "show", "bag_of_tricks"],
                                  ["recipes", "show", "digits", "--all"], ["keys"], ["keys", "optim"],
                                  ["ablate", "--list"], ["tune", "--help"]])
def test_the_light_commands_import_neither_torch_nor_timm(argv):
    proc = _run(f"""
import contextlib, io, sys
from timm_tricks.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        status = main({argv!r})
    except SystemExit as e:
        status = e.code
assert status == 0 and out.getvalue(), (status, out.getvalue())
print([m for m in {HEAVY!r} if m in sys.modules])
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_importing_the_package_and_its_config_loads_no_torch():
    proc = _run(f"import sys, timm_tricks, timm_tricks.config, timm_tricks.ladder, timm_tricks.tune_space; "
                f"print([m for m in {HEAVY!r} if m in sys.modules])")
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


@pytest.mark.parametrize("imports", ["import timm_tricks; import timm", "import timm; import timm_tricks",
                                     "import timm_tricks; from timm.models import create_model as _"])
def test_create_model_works_in_either_import_order(imports):
    proc = _run(f"{imports}\nimport timm\n"
                "model = timm.create_model('resnet50d_tricks', num_classes=3)\n"
                "print(type(model).__name__, model.num_classes, len(timm.list_models('*_tricks')) > 10)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ResNetTricks", "3", "True"]


def test_python_dash_m_help_works():
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
    proc = subprocess.run([sys.executable, "-m", "timm_tricks", "--help"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: timm-tricks")
    assert all(c in proc.stdout for c in ("recipes", "train", "tune", "ablate", "lr-schedule", "eval"))

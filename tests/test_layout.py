"""The package's architecture, as rules the code must keep.

Dependencies point one way: core (no Lightning, W&B or scikit-learn) <- Lightning layer
<- training <- CLI. No import cycles; no function over 60 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "namegen"
CORE = {"errors", "config", "data", "model", "sampling", "checkpoint", "notebook", "api", "evaluate", "export", "web",
        "finetune", "recurrence"}
LIGHTNING_LAYER = {"module", "datamodule", "callbacks", "loggers"}
ORCHESTRATION = {"training", "compare", "runlock", "tune"}
CLI = {"cli", "__main__", "__init__"}
LAYER = {**{m: 0 for m in CORE}, **{m: 1 for m in LIGHTNING_LAYER}, **{m: 2 for m in ORCHESTRATION},
         **{m: 3 for m in CLI}}
HEAVY = ("lightning", "pytorch_lightning", "wandb", "sklearn")


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8")) for p in PACKAGE.glob("*.py")}


def _namegen_imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(imported namegen module, at module level?) for every import of a namegen module. Module level: not
    inside a function or class (a module-level ``try`` counts as module level)."""
    nested = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                        ast.ClassDef))
              for inner in ast.walk(node) if inner is not node}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("namegen."):
            names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("namegen.")]
        found += [(name, id(node) not in nested) for name in names]
    return found


def test_every_module_has_a_layer():
    assert set(_modules()) == set(LAYER), "a new module: give it a layer here and a line in docs/architecture.md"


@pytest.mark.parametrize("name", sorted(LAYER))
def test_imports_point_down_and_sit_at_the_top(name):
    for imported, at_top in _namegen_imports(_modules()[name]):
        assert LAYER[imported] <= LAYER[name], f"{name} (layer {LAYER[name]}) imports {imported} (layer {LAYER[imported]})"
        assert at_top or name == "cli", f"{name} imports namegen.{imported} inside a function"


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_modules_import_no_training_stack_at_the_top(name):
    for node in _modules()[name].body:
        roots = ([a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import) else
                 [node.module.split(".")[0]] if isinstance(node, ast.ImportFrom) and node.module else [])
        assert not set(roots) & set(HEAVY), f"namegen.{name} imports {roots} at import time"


@pytest.mark.slow
def test_importing_the_api_loads_no_lightning_wandb_or_sklearn():
    code = ("import sys, namegen.api, namegen.export, namegen.evaluate, namegen.web; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1 + (body[0].lineno - node.lineno)
                if lines > 60:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long


def test_no_pytest_code_inside_the_package():
    assert not list(PACKAGE.glob("conftest.py")) and not list(PACKAGE.glob("test_*.py"))

"""The layering rule: the pure library never imports orchestration or tracking; mlflow/ holds no Python."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import ropelab

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("prefect", "mlflow", "dvc", "tasks", "flows")


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_library_source_never_imports_orchestration():
    offenders = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & set(FORBIDDEN))
                 for p in (ROOT / "src" / "ropelab").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_fresh_interpreter_importing_every_library_module_loads_no_orchestration():
    modules = [m.name for m in pkgutil.walk_packages(ropelab.__path__, "ropelab.")]
    assert "ropelab.rope.hf" in modules
    code = (f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_only_one_task_module_imports_mlflow():
    users = [p.name for p in (ROOT / "tasks").rglob("*.py") if "mlflow" in imported_roots(p)]
    assert len(users) <= 1, f"mlflow is imported by several task modules: {users}"
    flow_users = [p.name for p in (ROOT / "flows").rglob("*.py") if "mlflow" in imported_roots(p)]
    assert flow_users == [], "flows compose; tracking goes through tasks/"


def test_mlflow_store_directory_holds_no_python():
    assert (ROOT / "mlflow").is_dir()
    assert list((ROOT / "mlflow").rglob("*.py")) == []

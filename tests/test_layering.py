"""The layering rule: imports only point down (flows → tasks → library); mlflow/ holds no Python; importing a
module does nothing but define names."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import ropelab

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("prefect", "mlflow", "dvc")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offends(name: str, forbidden) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


def library_files() -> list[Path]:
    return list((ROOT / "src" / "ropelab").rglob("*.py"))


def test_library_source_never_imports_orchestration_tasks_or_flows():
    forbidden = (*ORCHESTRATION, "ropelab.tasks", "ropelab.flows", "tasks", "flows")
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in imported_modules(p) if offends(n, forbidden))
                 for p in library_files()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_tasks_never_import_flows():
    offenders = {p.name: sorted(n for n in imported_modules(p) if offends(n, ("ropelab.flows", "flows")))
                 for p in (ROOT / "tasks").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_layering_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ropelab.tasks.runner import stage\nimport prefect.flows\n")
    assert {n for n in imported_modules(bad) if offends(n, (*ORCHESTRATION, "ropelab.tasks"))} == {
        "ropelab.tasks.runner", "prefect.flows"}


def fresh_python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROPELAB_", "PREFECT_", "MLFLOW_", "HF_"))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/", env=env)


def test_fresh_interpreter_importing_every_library_module_loads_no_orchestration():
    modules = [m.name for m in pkgutil.walk_packages(ropelab.__path__, "ropelab.")
               if not m.name.startswith(("ropelab.tasks", "ropelab.flows"))]
    assert "ropelab.rope.adapter" in modules and "ropelab.artifacts" in modules
    forbidden = (*ORCHESTRATION, "ropelab.tasks", "ropelab.flows")
    code = (f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {ORCHESTRATION!r} or "
            f"m.startswith(('ropelab.tasks', 'ropelab.flows'))))")
    done = fresh_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", forbidden


def test_importing_every_module_has_no_side_effects():
    """No environment variable written, no file or folder made: entry points configure, imports define."""
    code = ("import os, importlib, pkgutil, ropelab, ropelab.tasks, ropelab.flows\n"
            "before = dict(os.environ); cwd = set(os.listdir('.'))\n"
            "for pkg in (ropelab, ropelab.tasks, ropelab.flows):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'): importlib.import_module(m.name)\n"
            "changed = sorted(k for k in os.environ if before.get(k) != os.environ[k])\n"
            "print(changed, sorted(set(os.listdir('.')) - cwd))")
    done = fresh_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] []"


def test_only_one_task_module_imports_mlflow_and_flows_never_do():
    users = [p.name for p in (ROOT / "tasks").rglob("*.py") if any(offends(n, ("mlflow",)) for n in imported_modules(p))]
    assert users == ["tracking.py"]
    flow_users = [p.name for p in (ROOT / "flows").rglob("*.py") if any(offends(n, ("mlflow",)) for n in imported_modules(p))]
    assert flow_users == [], "flows compose; tracking goes through ropelab.tasks"


def test_mlflow_store_directory_holds_no_python():
    assert (ROOT / "mlflow").is_dir()
    assert list((ROOT / "mlflow").rglob("*.py")) == []

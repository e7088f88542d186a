"""One distribution, one import name: every package directory is listed in pyproject.toml, mapped under
``ropelab``. (.ci/wheel-check builds and installs the wheel itself.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_in_the_distribution():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, mapping = set(setuptools["packages"]), setuptools["package-dir"]
    found = {"ropelab" + "".join(f".{p}" for p in init.parent.relative_to(ROOT / "src" / "ropelab").parts)
             for init in (ROOT / "src" / "ropelab").rglob("__init__.py")}
    found |= {"ropelab.tasks", "ropelab.flows", "ropelab.presets"}
    assert listed == found
    assert {k: v for k, v in mapping.items() if k != "ropelab"} == {
        "ropelab.tasks": "tasks", "ropelab.flows": "flows", "ropelab.presets": "configs"}
    assert setuptools["package-data"]["ropelab.presets"] == ["*.yaml"]


def test_the_console_script_points_into_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"ropelab": "ropelab.flows.cli:main"}


def test_installed_names_resolve_to_the_mapped_folders():
    import ropelab.flows
    import ropelab.presets
    import ropelab.tasks

    assert Path(ropelab.tasks.__file__).parent.name in ("tasks",) or "ropelab" in ropelab.tasks.__file__
    assert (Path(ropelab.presets.__file__).parent / "smoke.yaml").exists()
    assert Path(ropelab.flows.__file__).parent.joinpath("cli.py").exists()

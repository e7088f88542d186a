"""The project home: where data (DVC), the MLflow store, Prefect's state and the artifacts of one project live.

Found from ``--home`` / ``$ROPELAB_HOME``, else the nearest ancestor of the working directory holding the marker
file ``.ropelab``; ``ropelab init DIR`` makes one anywhere. Never derived from where the package is installed.
Nothing here runs on import: entry points call ``configure_environment``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ropelab import offline
from ropelab.errors import RopelabError

MARKER = ".ropelab"
HOME_README = """# ropelab project

Made by `ropelab init`. Run the embedded default here with `ropelab pipeline --config tiny` (or any preset in
`configs/`, or your own YAML). What lives here: `data*/` + `*.dvc` (corpora under DVC), `mlflow/` (the tracking
store: `ropelab ui` serves it), `.prefect/` (Prefect's database and the cached task results: `ropelab server`
serves them), `artifacts/` (models, searches, reports, exports). `ropelab runs` lists recent pipelines.
"""
GITIGNORE = "/mlflow/*\n!/mlflow/.gitkeep\n/.prefect/\n/artifacts/\n/.cache/\n/data/\n/data-*/\n"


@dataclass(frozen=True)
class Paths:
    home: Path

    def data(self, name: str = "data") -> Path:
        return self.home / name

    def corpus(self, name: str = "data") -> Path:
        return self.data(name) / "corpus"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def tracking_uri(self) -> str:
        # an absolute sqlite URI: relative ones resolve against the current directory
        return os.environ.get("ROPELAB_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"

    @property
    def prefect_home(self) -> Path:
        return self.home / ".prefect"

    @property
    def results(self) -> Path:
        return self.prefect_home / "results"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def hf_cache(self) -> Path:
        return self.home / ".cache" / "huggingface"


def find_home(explicit: str | Path | None = None, start: Path | None = None) -> Path:
    """--home, else $ROPELAB_HOME, else the nearest ancestor of ``start`` (the working directory) with the marker."""
    given = explicit or os.environ.get("ROPELAB_HOME")
    if given:
        home = Path(given).expanduser().resolve()
        if not (home / MARKER).exists():
            raise RopelabError(f"{home} is not a ropelab project (no {MARKER} file): make it one with "
                               f"`ropelab init {home}`")
        return home
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / MARKER).is_file():
            return folder
    raise RopelabError(f"no ropelab project in {here} or above: run `ropelab init DIR` to make one, or pass "
                       "--home DIR / set ROPELAB_HOME")


def paths() -> Paths:
    """The home of this process, as set by ``configure_environment``."""
    return Paths(find_home())


def configure_environment(home: Path) -> Paths:
    """Offline + telemetry off, Prefect state and the MLflow store inside ``home``; refuses a home it cannot
    write to with one line (before any stage starts)."""
    offline.enforce()
    p = Paths(home)
    try:
        for folder in (p.prefect_home, p.mlflow_db.parent, p.artifacts):
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RopelabError(f"cannot write to the project home {home}: {exc.strerror or exc}") from None
    if not os.access(home, os.W_OK) or not os.access(p.artifacts, os.W_OK):
        raise RopelabError(f"the project home {home} is not writable: fix its permissions or pass another --home")
    os.environ["ROPELAB_HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(p.prefect_home)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")  # cold start ~16 s here
    # INFO reaches the Prefect server (the UI shows each run's progress and results); the terminal shows warnings
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # not "Creating initial MLflow database tables"  # transformers' per-file bars; ours say more
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(p.results)
    os.environ["MLFLOW_TRACKING_URI"] = p.tracking_uri
    os.environ.setdefault("HF_DATASETS_CACHE", str(p.hf_cache / "datasets"))
    return p


def preset_names() -> list[str]:
    return sorted(f.name.removesuffix(".yaml") for f in resources.files("ropelab.presets").iterdir()
                  if f.name.endswith(".yaml"))


def resolve_config(given: str | Path, home: str | Path | None = None) -> Path:
    """A YAML path as given, else the project's own copy ``<home>/configs/<name>.yaml`` (made by ``init``, to edit),
    else a preset shipped with the package (``tiny``, ``smoke``, …)."""
    path = Path(given).expanduser()
    if path.is_file():
        return path
    name = str(given).removesuffix(".yaml")
    try:
        project_copy = find_home(home) / "configs" / f"{name}.yaml"
    except RopelabError:  # no project here: the packaged presets
        project_copy = None
    if project_copy is not None and "/" not in name and project_copy.is_file():
        return project_copy
    if name in preset_names():
        with resources.as_file(resources.files("ropelab.presets") / f"{name}.yaml") as found:
            return Path(found)
    raise RopelabError(f"config {given!r} is neither a file nor a preset; presets: {', '.join(preset_names())}")


def init_home(directory: Path) -> Path:
    """Make ``directory`` a ropelab project: marker, stores, presets to edit, DVC (inside git when there is one)."""
    from ropelab.tasks import versioning

    home = directory.expanduser().resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
        (home / "mlflow").mkdir(exist_ok=True)
        (home / "mlflow" / ".gitkeep").touch()
        configs = home / "configs"
        configs.mkdir(exist_ok=True)
        for name in preset_names():
            target = configs / f"{name}.yaml"
            if not target.exists():
                with resources.as_file(resources.files("ropelab.presets") / f"{name}.yaml") as preset:
                    shutil.copyfile(preset, target)
        for name, text in (("README.md", HOME_README), (".gitignore", GITIGNORE)):
            if not (home / name).exists():
                (home / name).write_text(text)
    except OSError as exc:
        raise RopelabError(f"cannot make a project in {home}: {exc.strerror or exc}") from None
    versioning.ensure_repo(home)
    (home / MARKER).write_text("ropelab project home: data, stores and artifacts of one project\n")
    return home

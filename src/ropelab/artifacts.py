"""Typed contracts between stages: what each stage returns, and what of it the tracking store records.

Every artifact names its location (``Path``s), its content fingerprint, the data version it was made from,
the MLflow run of the stage that recorded it (``run_id``, set by the stage runner) and the runs it consumed.
``identity()`` is its content identity (cache keys use it, never the path or the run); ``record()`` is what the
stage runner logs — the same whether the stage body ran or its result came from the cache; ``paths()`` are
the files a later stage needs (a cached result whose files are gone is recomputed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Series:
    """One metric logged at several steps (a loss curve; PPL against length with the length as the step)."""

    name: str
    points: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Record:
    """What the stage runner writes to a stage's MLflow run."""

    metrics: dict[str, float] = field(default_factory=dict)
    series: tuple[Series, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    files: tuple[tuple[Path, str], ...] = ()  # (file or directory, artifact folder in the run)
    datasets: tuple[tuple[str, str, str], ...] = ()  # (name, digest, source): MLflow dataset inputs


@dataclass(frozen=True)
class Artifact:
    path: Path
    fingerprint: str
    data_version: str
    run_id: str = ""
    consumed: tuple[str, ...] = ()

    def identity(self) -> dict:
        return {"kind": type(self).__name__, "fingerprint": self.fingerprint, "data_version": self.data_version}

    def paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def exists(self) -> bool:
        return all(p.exists() for p in self.paths())

    def recorded_by(self, run_id: str, consumed: tuple[str, ...] = ()) -> Artifact:
        return dataclasses.replace(self, run_id=run_id, consumed=consumed)

    def record(self) -> Record:
        return Record(tags={"artifact.path": str(self.path), "artifact.fingerprint": self.fingerprint})


@dataclass(frozen=True)
class DataArtifact(Artifact):
    """The corpus directory (``<home>/<name>/corpus``); fingerprint = the DVC md5 of ``<name>/``."""

    name: str = "data"
    documents: dict[str, int] = field(default_factory=dict)
    chars: dict[str, int] = field(default_factory=dict)

    def record(self) -> Record:
        return Record(metrics={f"chars/{k}": v for k, v in self.chars.items()}
                      | {f"documents/{k}": v for k, v in self.documents.items()},
                      tags={"data.pointer": f"{self.name}.dvc", "data.version": self.fingerprint},
                      files=((self.path / "manifest.json", ""),),
                      datasets=((self.name, self.fingerprint, str(self.path)),))


LOGGED_MODELS = ("base", "clex")  # copied into the run's artifacts (fine-tunes are stock exports next to it)


@dataclass(frozen=True)
class ModelArtifact(Artifact):
    """A stock transformers directory (base, fine-tuned, CLEX export) or a user's model file."""

    kind: str = "base"
    original_length: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    history: tuple[Series, ...] = ()
    lossy: tuple[str, ...] = ()
    rope_parameters: dict = field(default_factory=dict)
    plots: tuple[Path, ...] = ()
    read_documents: tuple[str, ...] = ()  # sha256 of every document its training read (lineage; never test)

    def paths(self) -> tuple[Path, ...]:
        return (self.path, *self.plots)

    def record(self) -> Record:
        tags = {"model.path": str(self.path), "model.fingerprint": self.fingerprint, "model.kind": self.kind}
        if self.lossy:
            tags["export.lossy"] = "; ".join(self.lossy)
        files = tuple((p, "plots") for p in self.plots)
        if self.kind in LOGGED_MODELS:
            files += ((self.path, "model"),)
        return Record(dict(self.metrics), self.history, tags, files)


@dataclass(frozen=True)
class SearchArtifact(Artifact):
    """A search's result directory: the winner's λ file (``lam``), its stock export, the honest report."""

    lam: Path = Path()
    export: Path = Path()
    mode: str = "extend"
    test_ppl: dict[str, float] = field(default_factory=dict)
    validation_ppl: dict[str, float] = field(default_factory=dict)
    evaluated: int = 0
    cost: dict[str, float] = field(default_factory=dict)  # forward tokens, cache hits, eliminations (totals)
    generations: tuple[Series, ...] = ()
    generation_logs: tuple[Path, ...] = ()
    lossy: tuple[str, ...] = ()
    variant: str = "longrope"
    fitness: str = "ppl"  # what validation_ppl / test_ppl measure: window PPL, or needle (answer-token) PPL
    sweep: dict[int, float] = field(default_factory=dict)  # longrope2: critical dim → its search's best fitness
    critical_dim: int = 0  # longrope2: the sweep's winner (rotary-pair index)

    def paths(self) -> tuple[Path, ...]:
        return (self.path, self.lam, self.export, *self.generation_logs)

    def record(self) -> Record:
        metrics = {f"test_ppl/{k}": v for k, v in self.test_ppl.items()}
        metrics |= {f"validation_ppl/{k}": v for k, v in self.validation_ppl.items()}
        metrics["search/evaluated"] = float(self.evaluated)
        metrics |= {f"search/{k}": v for k, v in self.cost.items()}
        series = self.generations
        params = {"search.lambda": str(self.lam), "search.export": str(self.export), "search.variant": self.variant,
                  "search.fitness": self.fitness}
        if self.sweep:
            metrics["search/critical_dim"] = float(self.critical_dim)
            series += (Series("search/critical_dim_sweep", tuple(sorted(self.sweep.items()))),)
        files = ((self.path, "result"), *((log, "generations") for log in self.generation_logs))
        return Record(metrics, series, params, files)


@dataclass(frozen=True)
class EvalArtifact(Artifact):
    """An evaluation report directory: the PPL table {row: {length: PPL}}, passkey accuracy, plots."""

    table: dict[str, dict[int, float]] = field(default_factory=dict)
    passkey: dict = field(default_factory=dict)
    seconds: float = 0.0
    needle: dict[str, dict[int, float]] = field(default_factory=dict)  # needle PPL {row: {length: PPL}}

    def record(self) -> Record:
        metrics = {f"ppl/{row}/{n}": v for row, cells in self.table.items() for n, v in cells.items()}
        metrics |= {f"needle_ppl/{row}/{n}": v for row, cells in self.needle.items() for n, v in cells.items()}
        series = tuple(Series(f"ppl/{row}", tuple(sorted(cells.items()))) for row, cells in self.table.items())
        series += tuple(Series(f"needle_ppl/{row}", tuple(sorted(cells.items()))) for row, cells in self.needle.items())
        return Record(metrics, series, {"report.dir": str(self.path)}, ((self.path, "zoo"),))


@dataclass(frozen=True)
class RulerArtifact(Artifact):
    """A RULER report directory: {task: {length: score}} for the cells that ran, and every skipped cell's reason."""

    table: dict[str, dict[int, float]] = field(default_factory=dict)
    samples: dict[str, dict[int, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # "task/length" -> why it did not run (an MLflow-safe key)
    limit: int = 0
    seconds: float = 0.0

    def record(self) -> Record:
        metrics = {f"ruler/{task}/{n}": v for task, cells in self.table.items() for n, v in cells.items()}
        metrics |= {f"ruler_samples/{task}/{n}": float(v) for task, cells in self.samples.items()
                    for n, v in cells.items()}
        series = tuple(Series(f"ruler/{task}", tuple(sorted(cells.items()))) for task, cells in self.table.items()
                       if cells)
        tags = {"report.dir": str(self.path), "ruler.limit": str(self.limit)}
        tags |= {f"ruler.skipped.{key}": why[:250] for key, why in self.skipped.items()}
        return Record(metrics, series, tags, ((self.path, "ruler"),))


@dataclass(frozen=True)
class ShortChoice:
    """The exported short factor set: the candidate with the lowest validation PPL at L."""

    chosen: str
    short: dict
    validation_ppl: dict[str, float]
    length: int
    windows: str = ""  # which windows scored the candidates (disjoint from every search's fitness windows)

    def record(self) -> Record:
        return Record({f"short_choice/{k}": v for k, v in self.validation_ppl.items()},
                      tags={"short_choice.chosen": self.chosen, "short_choice.windows": self.windows})


@dataclass(frozen=True)
class ExportArtifact(Artifact):
    """The pipeline's final stock transformers directory."""

    lossy: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # exact, but not as the method's own stock type (e.g. YaRN written as longrope)
    rope_parameters: dict = field(default_factory=dict)
    stock_ppl: dict[int, float] = field(default_factory=dict)  # held-out PPL by length, loaded by stock transformers

    def record(self) -> Record:
        tags = {"export.path": str(self.path), "export.rope_type": str(self.rope_parameters.get("rope_type"))}
        if self.lossy:
            tags["export.lossy"] = "; ".join(self.lossy)
        if self.notes:
            tags["export.notes"] = "; ".join(self.notes)
        return Record({f"export/stock_ppl/{n}": v for n, v in self.stock_ppl.items()}, tags=tags)

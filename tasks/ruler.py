"""The RULER task: lm-eval's synthetic long-context tasks on one model, its table and plot as a report."""

from __future__ import annotations

import time

from ropelab.artifacts import ModelArtifact, RulerArtifact
from ropelab.atomic import staged_directory
from ropelab.config import RulerConfig
from ropelab.eval.plots import plot_ruler
from ropelab.eval.ruler import RulerResult, markdown_table, run_ruler
from ropelab.models import load_model
from ropelab.rope.adapter import rope_basics
from ropelab.tasks.caching import IDENTITY
from ropelab.tasks.devices import device_task
from ropelab.tasks.home import paths
from ropelab.tasks.progress import progress_bar
from ropelab.tasks.retries import transient_only


def ruler_lengths(cfg: RulerConfig, original_length: int) -> list[int]:
    return [original_length * m for m in cfg.length_multipliers]


@device_task(name="evaluate-ruler", cache_policy=IDENTITY, retries=1, retry_delay_seconds=10,
             retry_condition_fn=transient_only)
def evaluate_ruler(model: ModelArtifact, cfg: RulerConfig, title: str = "") -> RulerArtifact:
    """RULER at the config's multiples of the model's L, ``cfg.limit`` prompts per (task, length)."""
    loaded, tokenizer = load_model(model.path)
    original = rope_basics(loaded.config).original_max_position_embeddings
    lengths = ruler_lengths(cfg, original)
    # generated files (tokenizer directory, punkt_tab, task YAMLs) live with the artifacts, never in data/
    work = paths().artifacts / "ruler-work" / model.fingerprint[:8]
    start = time.monotonic()
    with progress_bar() as bar:
        job = bar.add_task("RULER", total=len(cfg.tasks) * len(lengths), status="")
        result = run_ruler(loaded, tokenizer, cfg.tasks, lengths, cfg.limit, cfg.seed, work,
                           on_cell=lambda c: bar.update(job, advance=1, status=f"{c.task} @ {c.length}"))
    out = paths().artifacts / "eval" / f"ruler-{model.fingerprint[:8]}-{int(time.time())}"
    with staged_directory(out) as staging:  # an interrupted report never looks complete
        write_report(staging, result, title or model.kind, original)
    return RulerArtifact(out, model.fingerprint, model.data_version, table=result.table(),
                         samples={t: {c.length: c.samples for c in result.cells if c.task == t and c.score is not None}
                                  for t in result.tasks},
                         skipped={f"{c.task}/{c.length}": c.skipped for c in result.cells if c.skipped},
                         limit=cfg.limit, seconds=time.monotonic() - start)


def write_report(out, result: RulerResult, title: str, original_length: int) -> None:
    caption = (f"RULER (lm-eval 0.4.13 synthetic tasks, offline): string-match score over the first {result.limit} "
               f"generated prompts per cell, seed {result.seed}; L = {original_length}.")
    (out / "ruler.md").write_text(markdown_table(result, caption))
    (out / "ruler.json").write_text(result.to_json())
    plot_ruler(result.table(), out / "ruler_vs_length.png", f"RULER: {title} model", original_length)

"""The `ropelab` console script: the top entry point, above flows, tasks and the library.

Pure commands (`ropelab rope ...`, `ropelab config`) start without Prefect or MLflow; orchestration commands
resolve the project home, configure the environment, validate the whole config and only then import their flow,
so a user mistake is one line before anything heavy starts.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

import ropelab
from ropelab.config import PIPELINE_STAGES, RunConfig
from ropelab.errors import RopelabError
from ropelab.rope import cli as rope_cli

FLOWS = {  # command -> (module, flow function, help)
    "data": ("ropelab.flows.data", "data_flow", "assemble the corpus and version it with DVC"),
    "base": ("ropelab.flows.base", "base_flow", "pretrain the embedded tiny base model (or check a user's model)"),
    "search": ("ropelab.flows.search", "search_flow", "LongRoPE evolutionary search of λ at search.scale"),
    "finetune": ("ropelab.flows.finetune", "finetune_flow", "fine-tune with a fixed RoPE (λ file or baseline) at a longer length"),
    "clex": ("ropelab.flows.clex", "clex_flow", "train CLEX (neural-ODE RoPE scaling) and compare it with a PI fine-tune"),
    "pipeline": ("ropelab.flows.pipeline", "pipeline_flow", "the progressive LongRoPE recipe and CLEX end to end"),
    "evaluate": ("ropelab.flows.evaluate", "evaluate_flow", "the method-zoo report: PPL across lengths, passkey"),
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", help="a preset name (tiny, smoke, llama2-7b, mistral-7b: the project's "
                   "copy in <home>/configs/ if there is one, else the packaged preset) or a YAML file (default: tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set pretrain.steps=100 (repeatable)")


def load(args) -> RunConfig:
    from ropelab.config import load_config
    from ropelab.tasks.home import resolve_config

    return load_config(resolve_config(args.config, getattr(args, "home", None)), args.overrides)


class UserErrorFilter(logging.Filter):
    """Prefect logs a failed task's traceback; for a user error the CLI prints the one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, RopelabError) and "RopelabError" not in record.getMessage()


def quiet_user_errors() -> None:
    for handler in logging.getLogger("prefect").handlers + logging.getLogger().handlers:
        handler.addFilter(UserErrorFilter())


def run_flow(args) -> int:
    from ropelab.tasks.home import configure_environment, find_home

    config = load(args)  # every value validated before any flow machinery starts
    if getattr(args, "dry_run", False):
        from ropelab.plan import pipeline_plan

        print("\n".join(pipeline_plan(config)))
        return 0
    configure_environment(find_home(args.home))
    if args.refresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    module, name, _ = FLOWS[args.command]
    flow = getattr(importlib.import_module(module), name)
    quiet_user_errors()
    if args.command == "pipeline":
        flow(config, rerun_from=args.rerun_from)
    else:
        flow(config)
    return 0


def init(args) -> int:
    from ropelab.tasks.home import init_home

    home = init_home(Path(args.directory))
    print(f"ropelab project in {home}: run `ropelab pipeline --config tiny` there (presets to edit in {home / 'configs'})")
    return 0


def show_runs(args) -> int:
    """Recent pipelines from the home's MLflow store: did last night's run work, and what did it give?"""
    import time

    from ropelab.tasks.home import configure_environment, find_home

    configure_environment(find_home(args.home))
    from ropelab.tasks import tracking

    rows = tracking.recent_pipelines(args.limit)
    if not rows:
        print("no pipeline runs in this project yet: `ropelab pipeline --config tiny`")
        return 0
    print(f"{'started':<17} {'experiment':<16} {'preset':<10} {'status':<9} {'final/base@L':>12} {'Δ at L':>7} "
          f"{'minutes':>7}  run")
    for r in rows:
        ratio = f"{r['ratio']:.3f}×" if r["ratio"] is not None else "–"
        change = f"{r['change']:+.1%}" if r["change"] is not None else "–"
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["started"]))
        print(f"{started:<17} {r['experiment'][:16]:<16} {r['preset'][:10]:<10} {r['status']:<9} {ratio:>12} "
              f"{change:>7} {r['minutes']:>7.1f}  {r['run_id'][:8]}" + (f"  {r['error'][:60]}" if r["error"] else ""))
    return 0


def show_config(args) -> int:
    from ropelab.config import explain, to_dict

    if args.explain:
        print("\n".join(explain()))
        return 0
    import yaml

    print(yaml.safe_dump(to_dict(load(args)), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ropelab", description="Context-window extension for RoPE models.")
    parser.add_argument("--version", action="version", version=f"ropelab {ropelab.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    rope_cli.add_commands(commands)
    sub = commands.add_parser("init", help="make a directory a ropelab project (DVC, stores, presets)")
    sub.add_argument("directory", nargs="?", default=".", help="the project directory (default: here)")
    sub.set_defaults(run=init)
    for command, (_, _, text) in FLOWS.items():
        sub = commands.add_parser(command, help=text)
        _add_config_flags(sub)
        sub.add_argument("--home", default=None, help="the project home (default: $ROPELAB_HOME, else the nearest "
                         "directory at or above here made by `ropelab init`)")
        sub.add_argument("--refresh", action="store_true", help="recompute every stage instead of using the cache")
        sub.set_defaults(run=run_flow)
        if command == "pipeline":
            sub.add_argument("--rerun-from", choices=PIPELINE_STAGES, default=None,
                             help="recompute this stage and everything after it (cached stages before it are reused)")
            sub.add_argument("--dry-run", action="store_true",
                             help="resolve the config, print the stage plan and a memory estimate; load nothing")
    runs = commands.add_parser("runs", help="recent pipeline runs: state, preset, headline, duration (from MLflow)")
    runs.add_argument("--home", default=None, help="the project home (default: as for the flow commands)")
    runs.add_argument("-n", "--limit", type=int, default=10, help="how many (default 10)")
    runs.set_defaults(run=show_runs)
    config = commands.add_parser("config", help="print the resolved config, or every field with its meaning")
    _add_config_flags(config)
    config.add_argument("--explain", action="store_true", help="list every field, its default and its meaning")
    config.set_defaults(run=show_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ropelab import offline

    offline.enforce()  # before anything imports huggingface_hub, which reads the settings once
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except RopelabError as exc:
        print(f"ropelab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ropelab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `ropelab` console script: the top entry point, above flows, tasks and the library.

Pure commands (`ropelab rope ...`) come from the library; orchestration commands import their flow lazily,
so `ropelab rope show` starts without paying for Prefect and MLflow imports.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import ropelab  # noqa: F401  (enforces the offline settings before any heavy import)
from ropelab.config import PIPELINE_STAGES
from ropelab.errors import RopelabError
from ropelab.rope import cli as rope_cli
from tasks.settings import REPO_ROOT

DEFAULT_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"
FLOWS = {  # command -> (module, flow function, help)
    "data": ("flows.data", "data_flow", "assemble the corpus into data/ and version it with DVC"),
    "base": ("flows.base", "base_flow", "pretrain the embedded tiny base model (or check a user's model)"),
    "search": ("flows.search", "search_flow", "LongRoPE evolutionary search of λ at search.scale"),
    "finetune": ("flows.finetune", "finetune_flow", "fine-tune with a fixed RoPE (λ file or baseline) at a longer length"),
    "clex": ("flows.clex", "clex_flow", "train CLEX (neural-ODE RoPE scaling) and compare it with a PI fine-tune"),
    "pipeline": ("flows.pipeline", "pipeline_flow", "the progressive LongRoPE recipe and CLEX end to end"),
    "evaluate": ("flows.evaluate", "evaluate_flow", "the method-zoo report: PPL across lengths, passkey"),
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML preset (default: configs/tiny.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set pretrain.steps=100 (repeatable)")
    p.add_argument("--refresh", action="store_true", help="recompute every stage instead of using the cache")


def run_flow(args) -> int:
    import importlib

    from ropelab.config import load_config, to_dict

    config = load_config(args.config, args.overrides)  # errors before any flow machinery starts
    if args.command == "clex" or (args.command == "pipeline" and config.pipeline.clex):
        from ropelab.clex.train import check_config

        check_config(config.clex)
    if args.command == "pipeline":
        from ropelab.plan import check_pipeline

        check_pipeline(config.pipeline)
    if args.refresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    if getattr(args, "dry_run", False):
        from ropelab.plan import pipeline_plan

        print("\n".join(pipeline_plan(config)))
        return 0
    module, name, _ = FLOWS[args.command]
    flow = getattr(importlib.import_module(module), name)
    if args.command == "pipeline":
        flow(to_dict(config), rerun_from=args.rerun_from)
    else:
        flow(to_dict(config))
    return 0


def show_config(args) -> int:
    from ropelab.config import explain, load_config, to_dict

    if args.explain:
        print("\n".join(explain()))
        return 0
    import yaml

    print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ropelab", description="Context-window extension for RoPE models.")
    parser.add_argument("--version", action="version", version=f"ropelab {ropelab.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    rope_cli.add_commands(commands)
    for command, (_, _, text) in FLOWS.items():
        sub = commands.add_parser(command, help=text)
        _add_config_flags(sub)
        sub.set_defaults(run=run_flow)
        if command == "pipeline":
            sub.add_argument("--rerun-from", choices=PIPELINE_STAGES, default=None,
                             help="recompute this stage and everything after it (cached stages before it are reused)")
            sub.add_argument("--dry-run", action="store_true",
                             help="resolve the config, print the stage plan and a memory estimate; load nothing")
    config = commands.add_parser("config", help="print the resolved config, or every field with its meaning")
    _add_config_flags(config)
    config.add_argument("--explain", action="store_true", help="list every field, its default and its meaning")
    config.set_defaults(run=show_config)
    return parser


def main(argv: list[str] | None = None) -> int:
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

"""The `ropelab` console script: the top entry point, above flows, tasks and the library.

Pure commands (`ropelab rope ...`, `ropelab config`) start without Prefect or MLflow; orchestration commands
resolve the project home, configure the environment, validate the whole config and only then import their flow,
so a user mistake is one line before anything heavy starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import ropelab
from ropelab.config import PIPELINE_STAGES, RunConfig
from ropelab.errors import RopelabError, Terminated
from ropelab.flows.commands import FLOWS
from ropelab.rope import cli as rope_cli


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
    import prefect.main  # noqa: F401  (Prefect installs its log handlers on this import: the filter goes on those)

    for handler in logging.getLogger("prefect").handlers + logging.getLogger().handlers:
        handler.addFilter(UserErrorFilter())


def run_flow(args) -> int:
    from ropelab.tasks.home import configure_environment, find_home

    if getattr(args, "limit", None) is not None:  # `evaluate --limit N`: the RULER prompts per (task, length)
        args.overrides = [*args.overrides, f"ruler.limit={args.limit}"]
    config = load(args)  # every value validated before any flow machinery starts
    rerun_from = getattr(args, "rerun_from", None)
    if rerun_from is not None and rerun_from not in PIPELINE_STAGES:
        raise RopelabError(f"--rerun-from: unknown stage {rerun_from!r}; stages: {', '.join(PIPELINE_STAGES)}")
    if getattr(args, "dry_run", False):
        from ropelab.plan import pipeline_plan

        print("\n".join(pipeline_plan(config)))
        return 0
    from ropelab import preflight
    from ropelab.tasks import servers

    preflight.check(config)  # the files the config names (model, corpora, λ), before any stage
    servers.connect(configure_environment(find_home(args.home)))  # the home's `ropelab server`, when it runs
    if args.refresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    from ropelab.flows.commands import run_command

    quiet_user_errors()
    run_command(args.command, config, getattr(args, "rerun_from", None), getattr(args, "suite", "zoo"))
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


def _home_paths(args):
    from ropelab.tasks.home import configure_environment, find_home

    return configure_environment(find_home(args.home))


def _serve_one(args, make, what: str, announce: bool = False) -> int:
    """Shared by `server` and `ui`: bind check, exposure warning, start, print the URL, block until a signal."""
    from ropelab.tasks import servers

    paths = _home_paths(args)
    warning = servers.exposure_warning(args.host, what)
    if warning:
        print(f"ropelab: {warning}", file=sys.stderr)
    servers.check_port_free(args.host, args.port)
    service = make(paths, args.host, args.port)

    def ready():
        if announce:  # before any client can take a slot of this server
            from ropelab.tasks.devices import reclaim_for_new_server

            reclaim_for_new_server(f"{service.url}/api")
        print(f"{what} for {paths.home}: {service.landing or service.url}  (log: {service.log}; Ctrl-C stops it)",
              flush=True)
        if announce:
            servers.announce(paths, service.url, os.getpid())

    return servers.run_until_signal(service, ready, (lambda: servers.withdraw(paths)) if announce else lambda: None)


def start_server(args) -> int:
    from ropelab.tasks import servers

    return _serve_one(args, servers.prefect_service, "the Prefect server and UI", announce=True)


def start_ui(args) -> int:
    from ropelab.tasks import servers

    return _serve_one(args, servers.mlflow_service, "the MLflow UI")


def serve(args) -> int:
    from ropelab.tasks import servers

    paths = _home_paths(args)
    config = load(args)
    api = servers.require_server(paths, "serve")
    from ropelab.flows.deploy import serve_schedules

    print(f"serving {len(config.schedules) or 'no'} schedule(s) of {args.config} against {api}", flush=True)
    quiet_user_errors()
    serve_schedules(config, args.config, str(paths.home), limit=args.limit)
    return 0


def trigger(args) -> int:
    from ropelab.tasks import servers

    api = servers.require_server(_home_paths(args), "trigger")
    from ropelab.flows.deploy import trigger as run_deployment

    run = run_deployment(args.name, args.overrides)
    ui = os.environ.get("PREFECT_UI_URL", api.removesuffix("/api"))
    print(f"started {run.name} ({run.id}) of deployment {args.name}: {ui}/runs/flow-run/{run.id}")
    return 0


def _add_server_commands(commands) -> None:
    for name, run, port, text in (("server", start_server, 4200, "run the Prefect server + UI for this project "
                                   "(runs, deployments, schedules, device slots)"),
                                  ("ui", start_ui, 5000, "run the MLflow UI on this project's tracking store")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                         "anything else exposes a UI without authentication)")
        sub.add_argument("--port", type=int, default=port, help=f"port (default {port})")
        sub.add_argument("--home", default=None, help="the project home (default: as for the flow commands)")
        sub.set_defaults(run=run)
    sub = commands.add_parser("serve", help="register the config's `schedules:` as deployments and run them "
                              "(needs `ropelab server`)")
    _add_config_flags(sub)
    sub.add_argument("--home", default=None, help="the project home (default: as for the flow commands)")
    sub.add_argument("--limit", type=int, default=1, help="flow runs at once (default 1)")
    sub.set_defaults(run=serve)
    sub = commands.add_parser("trigger", help="start a run of a served deployment now")
    sub.add_argument("name", help="the deployment (a `schedules:` entry's name)")
    sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="extra override for this run (repeatable)")
    sub.add_argument("--home", default=None, help="the project home (default: as for the flow commands)")
    sub.set_defaults(run=trigger)


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
        if command == "evaluate":
            sub.add_argument("--suite", choices=("zoo", "ruler"), default="zoo",
                             help="zoo: PPL across lengths and passkey (default); ruler: lm-eval's synthetic RULER "
                             "tasks at ruler.length_multipliers × L, offline")
            sub.add_argument("--limit", type=int, default=None, metavar="N",
                             help="--suite ruler: prompts per (task, length) (default: ruler.limit)")
        if command == "pipeline":
            sub.add_argument("--rerun-from", default=None, metavar="STAGE",
                             help="recompute this stage and everything after it (cached stages before it are "
                             f"reused): one of {', '.join(PIPELINE_STAGES)}")
            sub.add_argument("--dry-run", action="store_true",
                             help="resolve the config, print the stage plan and a memory estimate; load nothing")
    _add_server_commands(commands)
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
    # the servers stop on SIGTERM themselves (tasks/servers.run_until_signal) and exit 0: a normal stop
    previous = None if args.run in (start_server, start_ui) else _terminate_like_ctrl_c()
    try:
        return args.run(args)
    except RopelabError as exc:
        print(f"ropelab: error: {exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"ropelab: stopped by signal {exc.signum}; open runs are marked KILLED", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("ropelab: interrupted; open runs are marked KILLED", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_like_ctrl_c():
    """SIGTERM raises ``Terminated`` in the main thread (as Ctrl-C raises KeyboardInterrupt), so the stage runner
    closes each open MLflow run as KILLED before the process ends. Returns the previous handler (None: not set,
    e.g. off the main thread)."""
    def handler(signum, frame):
        raise Terminated(signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


if __name__ == "__main__":
    sys.exit(main())

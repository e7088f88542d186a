"""Deployments: the `schedules:` of a config served by Prefect (`ropelab serve`) and started by the scheduler or
by `ropelab trigger NAME`.

A deployment runs ``scheduled_run``, which resolves the same home, config and overrides a CLI run would and calls
the same flow, so a scheduled run has the CLI run's caching, lineage and artifacts — plus the deployment's name
and schedule as tags on every MLflow run it opens.
"""

from __future__ import annotations

from datetime import timedelta

from prefect import flow, runtime, serve

from ropelab.config import RunConfig, ScheduleConfig, load_config
from ropelab.errors import RopelabError
from ropelab.flows.commands import run_command
from ropelab.tasks import tracking
from ropelab.tasks.home import configure_environment, find_home, resolve_config

FLOW_NAME = "ropelab"


def describe(entry: ScheduleConfig) -> str:
    return f"cron {entry.cron} (UTC)" if entry.cron else f"every {entry.interval} s"


@flow(name=FLOW_NAME, flow_run_name="{command}-{config}", log_prints=True)
def scheduled_run(command: str, config: str, overrides: list[str], schedule: str = "manual",
                  home: str | None = None) -> None:
    """One run of a deployment, in the served process's project home."""
    paths = configure_environment(find_home(home))
    cfg = load_config(resolve_config(config, paths.home), overrides)
    with tracking.deployment_context(runtime.deployment.name or "none", schedule):
        run_command(command, cfg)


def deployments(cfg: RunConfig, config: str, home: str):
    """One Prefect deployment per `schedules:` entry of ``cfg`` (read from ``config``)."""
    if not cfg.schedules:
        raise RopelabError(f"config {config!r} has no `schedules:` section; add entries like\n  schedules:\n"
                           "    - {name: nightly, flow: pipeline, config: tiny, cron: '0 3 * * *'}")
    out = []
    for entry in cfg.schedules:
        timing = {"cron": entry.cron} if entry.cron else {"interval": timedelta(seconds=entry.interval)}
        out.append(scheduled_run.to_deployment(
            entry.name, **timing, tags=["ropelab", entry.flow],
            parameters={"command": entry.flow, "config": entry.config or config, "overrides": list(entry.overrides),
                        "schedule": describe(entry), "home": home},
            description=f"ropelab {entry.flow} --config {entry.config or config} ({describe(entry)})"))
    return out


def serve_schedules(cfg: RunConfig, config: str, home: str, limit: int = 1) -> None:
    """Register every schedule and run their flow runs here until SIGINT/SIGTERM (one at a time by default:
    device work is serialised by the device slots anyway)."""
    serve(*deployments(cfg, config, home), limit=limit, print_starting_message=True)


def trigger(name: str, overrides: list[str]):
    """Create a run of deployment ``name`` now (extra ``--set`` overrides appended); returns the flow run."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
    except ObjectNotFound:
        raise RopelabError(f"no deployment named {name!r}: `ropelab serve --config …` registers the config's "
                           "schedules (see `ropelab runs` and the Prefect UI's Deployments page)") from None
    parameters = {"overrides": list(deployment.parameters.get("overrides", [])) + list(overrides),
                  "schedule": "manual"}
    return run_deployment(f"{FLOW_NAME}/{name}", parameters=parameters, timeout=0)

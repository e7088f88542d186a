"""`ropelab search`: LongRoPE's evolutionary search of λ (and n̂) at one ratio, on the base model, or
LongRoPE2's (search.variant longrope2: a sweep of critical dims, one search each)."""

from __future__ import annotations

from prefect import flow

from ropelab.artifacts import DataArtifact, ModelArtifact, SearchArtifact
from ropelab.config import RunConfig
from ropelab.flows.base import upstream
from ropelab.tasks import runner
from ropelab.tasks.search import (
    planned_generations,
    search_generation,
    search_init,
    search_report,
    sweep_plan,
)


@flow(name="search", flow_run_name="search-{cfg.preset}")
def search_flow(cfg: RunConfig, parent_run_id: str | None = None, model: ModelArtifact | None = None,
                data: DataArtifact | None = None, refresh: bool = False, name: str = "") -> SearchArtifact:
    """Search on ``model`` (default: this config's base model); ``refresh`` recomputes every generation;
    ``name`` names the MLflow run (default: search-<s>x, recovery-<s>x or longrope2-<s>x). search.variant
    longrope2 runs one search per critical dim of the sweep and reports the best."""
    model, data = upstream(cfg, parent_run_id, model, data)
    s = cfg.search
    kind = "recovery" if s.mode == "recovery" else "longrope2" if s.variant == "longrope2" else "search"
    name = name or f"{kind}-{s.scale:g}x"
    planned = planned_generations(s)  # a count evo_scale leaves at 0 is one error line before the run opens
    with runner.stage(name, cfg, parent_run_id=parent_run_id, data_version=data.fingerprint,
                      consumed={"model": model, "data": data}, refresh=refresh) as stage:
        dims = stage.call(sweep_plan, model, s)
        if not dims:
            result = stage.record(stage.call(search_report, model, data, s, generations(stage, model, data, s, planned,
                                                                                        name)))
        else:
            runs = {cd: generations(stage, model, data, s, planned, f"{name} cd {cd}", cd) for cd in dims}
            sweep = {cd: runs[cd][-1].best for cd in dims}
            best = min(dims, key=lambda cd: (sweep[cd], dims.index(cd)))  # the lowest cd of equal bests
            print("critical-dim sweep (validation fitness): "
                  + ", ".join(f"cd {cd}: {v:.4f}{' ←' if cd == best else ''}" for cd, v in sweep.items()))
            result = stage.record(stage.call(search_report, model, data, s, runs[best], best, sweep, list(runs.values())))
    print(f"winner: validation PPL {result.validation_ppl['winner']:.4f}, test PPL {result.test_ppl['winner']:.4f}"
          f" ({result.evaluated} candidates evaluated)")
    cost = result.cost
    print(f"cost: {cost['forward_tokens_total']:.0f} forward tokens, {cost['cache_hits_total']:.0f} windows from the "
          f"fitness cache, {cost['eliminated_total']:.0f} candidates eliminated by racing"
          + (" (population halved above search.halve_above)" if cost["halved"] else "")
          + (f" (stopped early after generation {cost['generations']:.0f})" if cost["stopped_early"] else ""))
    for key, value in sorted(result.test_ppl.items()):
        print(f"  test PPL {key:>14}: {value:.4f}")
    print(f"λ: {result.lam}\nexport: {result.export}")
    return result


def generations(stage: runner.Stage, model: ModelArtifact, data: DataArtifact, s, planned: int, name: str,
                critical_dim: int | None = None) -> list:
    """One search's generations, each a cached task (a killed search resumes from its last one)."""
    done = [stage.call(search_init, model, data, s, critical_dim=critical_dim)]
    while done[-1].generation < planned and not done[-1].stopped_early:
        done.append(stage.call(search_generation, model, data, s, done[-1], critical_dim=critical_dim))
        g = done[-1]
        short = f" ({g.shortfall} children could not be made)" if g.shortfall else ""
        raced = f", {g.eliminated} eliminated" if s.racing else ""
        print(f"{name} generation {g.generation}: best {g.best:.4f}, median {g.median:.4f}, "
              f"{g.forward_tokens} forward tokens{raced}{short}")
    return done

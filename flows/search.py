"""`ropelab search`: LongRoPE's evolutionary search of λ (and n̂) at one ratio, on the base model."""

from __future__ import annotations

from prefect import flow

from ropelab.artifacts import DataArtifact, ModelArtifact, SearchArtifact
from ropelab.config import RunConfig
from ropelab.flows.base import upstream
from ropelab.tasks import runner
from ropelab.tasks.search import planned_generations, search_generation, search_init, search_report


@flow(name="search", flow_run_name="search-{cfg.preset}")
def search_flow(cfg: RunConfig, parent_run_id: str | None = None, model: ModelArtifact | None = None,
                data: DataArtifact | None = None, refresh: bool = False, name: str = "") -> SearchArtifact:
    """Search on ``model`` (default: this config's base model); ``refresh`` recomputes every generation;
    ``name`` names the MLflow run (default: search-<s>x or recovery-<s>x)."""
    model, data = upstream(cfg, parent_run_id, model, data)
    s = cfg.search
    name = name or f"{'recovery' if s.mode == 'recovery' else 'search'}-{s.scale:g}x"
    planned = planned_generations(s)  # a count evo_scale leaves at 0 is one error line before the run opens
    with runner.stage(name, cfg, parent_run_id=parent_run_id, data_version=data.fingerprint,
                      consumed={"model": model, "data": data}, refresh=refresh) as stage:
        generations = [stage.call(search_init, model, data, s)]
        while generations[-1].generation < planned and not generations[-1].stopped_early:
            generations.append(stage.call(search_generation, model, data, s, generations[-1]))
            g = generations[-1]
            short = f" ({g.shortfall} children could not be made)" if g.shortfall else ""
            raced = f", {g.eliminated} eliminated" if s.racing else ""
            print(f"{name} generation {g.generation}: best {g.best:.4f}, median {g.median:.4f}, "
                  f"{g.forward_tokens} forward tokens{raced}{short}")
        result = stage.record(stage.call(search_report, model, data, s, generations))
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

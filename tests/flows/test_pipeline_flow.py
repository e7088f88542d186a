"""The whole progressive pipeline on the smoke preset: stages chained, cached, rerun from a stage, exported."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM

from ropelab.config import derive, load_config
from ropelab.rope import RopeSpec
from ropelab.rope.export import load_export_specs
from ropelab.rope.modules import install_rope
from ropelab.tasks.home import resolve_config

pytestmark = pytest.mark.slow


def smoke():
    """The smoke preset with LongRoPE2 beside the progressive recipe (and needle PPL in every evaluation): the one
    pipeline of the suite that runs every stage; the others leave it out to stay quick."""
    return derive(load_config(resolve_config("smoke")), pipeline={"longrope2": True}, eval={"needle_samples": 2})


def snapshot() -> dict:
    """What the stages have produced on disk (directories per kind, fitness evaluations)."""
    from ropelab.tasks.home import paths

    art = paths().artifacts
    dirs = {kind: sorted(p.name for p in (art / kind).iterdir()) if (art / kind).exists() else []
            for kind in ("models", "finetune", "eval", "exports", "search", "clex")}
    dirs["fitness"] = sum(len(p.read_text().splitlines()) for p in (art / "fitness-cache").glob("*.jsonl"))
    dirs["written"] = {str(p.parent.parent.name): (json.loads(p.read_text())["mode"], p.stat().st_mtime_ns)
                       for p in (art / "search").glob("*/result/rescale_factors.json")}
    return dirs


def stage_view(parent_run_id: str) -> dict:
    """{stage run name: (metrics, cache tag)} of a pipeline's stage runs, as MLflow holds them."""
    from ropelab.tasks import tracking

    return {r.info.run_name: (r.data.metrics, r.data.tags.get("ropelab.cache")) for r in tracking.child_runs(parent_run_id)}


@pytest.fixture(scope="module")
def first():
    from ropelab.flows.pipeline import pipeline_flow

    result = pipeline_flow(smoke())
    return result, snapshot()


def test_every_stage_ran_and_is_recorded(first):
    from ropelab.tasks import tracking

    result, _ = first
    children = tracking.child_runs(result.run_id)
    stages = {r.data.tags["ropelab.stage"] for r in children}
    assert {"data", "base", "search1-2x", "search1-4x", "finetune-128", "finetune-256", "search2-2x", "recovery-1x",
            "clex", "finetune-64", "evaluate-base", "evaluate-finetuned", "evaluate-clex",
            "evaluate-pi-4x-at-64", "evaluate-pi-4x-at-256", "longrope2-8x", "finetune-512",
            "evaluate-longrope2"} <= stages
    assert not any(name.startswith("recovery-") and name != "recovery-1x" for name in stages)
    assert all(r.data.tags["data.version"] == result.data.fingerprint for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    assert "summary.md" in {a.path for a in tracking.client().list_artifacts(result.run_id)}


def test_running_the_smoke_preset_leaves_the_repository_clean(first):
    """The session home is a clone of the repository: the smoke preset has its own committed data pointer."""
    from ropelab.tasks.home import paths

    status = subprocess.run(["git", "status", "--porcelain"], cwd=paths().home, capture_output=True, text=True)
    assert status.returncode == 0 and status.stdout == ""


def test_summary_opens_with_the_stock_export_headline_also_logged_on_the_parent_run(first):
    """The headline is the export as stock transformers loads it; the in-memory number (with n̂, which the
    export drops) stands beside it, labelled, exactly when the export is lossy."""
    from ropelab.tasks import tracking

    result, _ = first
    rows = result.combined
    base_at_L, stock, in_memory = rows["base:none"][64], result.export.stock_ppl, rows["finetuned:progressive_recovery"]
    first_line = result.summary.split("\n")[2]  # smoke: L = 64, final length 64 · 4 · 2 = 512
    assert first_line.startswith(f"**512 tokens: PPL {stock[512]:.3f}, {stock[512] / base_at_L:.2f}× the base "
                                 f"model's {base_at_L:.3f} at 64; at 64: {stock[64]:.3f}")
    assert "(the export as stock transformers loads it, held-out windows)" in first_line
    metrics = tracking.client().get_run(result.run_id).data.metrics
    assert metrics["headline/final_length_ppl_over_base_at_L"] == pytest.approx(stock[512] / base_at_L)
    assert metrics["headline/change_at_L"] == pytest.approx(stock[64] / base_at_L - 1)
    assert metrics["minutes/base"] > 0
    if result.export.lossy:  # n̂ > 0: the stock export differs from what the evaluation scored
        assert "; in memory, with what the export drops (long set: n̂ = " in first_line
        assert f"{in_memory[512]:.3f} ({in_memory[512] / base_at_L:.2f}×), at 64: {in_memory[64]:.3f}" in first_line
        assert metrics["headline/in_memory_change_at_L"] == pytest.approx(in_memory[64] / base_at_L - 1)
    else:  # the same weights and RoPE on the same windows: the same numbers
        assert stock == {n: in_memory[n] for n in (64, 512)} and "in memory" not in first_line


def test_summary_lists_the_wall_time_of_every_stage_run(first):
    from ropelab.tasks import tracking

    result, _ = first
    children = tracking.child_runs(result.run_id)
    times = result.summary.split("## stage times")[1]
    rows = [line.split("|")[1:3] for line in times.strip().splitlines()[2:]]
    assert sorted(name.strip() for name, _ in rows[:-1]) == sorted(r.info.run_name for r in children)
    minutes = [float(m) for _, m in rows]
    assert all(m >= 0 for m in minutes) and minutes[-1] == pytest.approx(sum(minutes[:-1]), abs=0.01 * len(rows))


def test_stage_two_search_takes_its_own_iteration_count(first):
    from ropelab.tasks import tracking

    result, _ = first
    generations = tracking.client().list_artifacts(result.stage2.run_id, "generations")
    assert len(generations) == 1 + 2  # initial population + pipeline.final_search_iterations (search: 3)


def test_export_equals_the_fine_tuned_model_with_the_pipeline_sets_reloaded_independently(first):
    """Stock transformers on the export against the fine-tuned model's own directory with the sets the pipeline
    evaluated (stage 2's λ file, the chosen short set; n̂ left out: the export drops it), bit for bit."""
    from ropelab.tasks.export import lambda_spec

    result, _ = first
    stock = AutoModelForCausalLM.from_pretrained(result.export.path).eval()
    assert stock.config.rope_parameters["rope_type"] == "longrope"
    finetuned = result.finetuned[1]
    long = RopeSpec.from_dict(lambda_spec(result.stage2.lam, finetuned))
    short = RopeSpec.from_dict(result.short_choice.short)
    assert bool(result.export.lossy) == bool(long.start_tokens or short.start_tokens)
    ours = AutoModelForCausalLM.from_pretrained(finetuned.path).eval()
    install_rope(ours, long.replace(start_tokens=0), short.replace(start_tokens=0))
    assert load_export_specs(result.export.path) == (long, short)  # the record keeps n̂
    for length in (32, 64, 65, 300):
        ids = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            assert torch.equal(stock(ids).logits, ours(ids).logits), length


def test_exported_short_factors_are_the_better_set_at_L(first):
    result, _ = first
    choice = result.short_choice
    scores = choice.validation_ppl
    assert set(scores) == {"recovery", "long"} and choice.chosen == min(scores, key=scores.get)
    exported = AutoModelForCausalLM.from_pretrained(result.export.path).config.rope_parameters
    assert exported["short_factor"] == pytest.approx(list(choice.short["rescale_factors"]))
    assert f"short factors exported: **{choice.chosen}**" in result.summary


def test_short_choice_scores_windows_no_search_was_fitted_on(first):
    """Every search's fitness windows are avoided: their lengths are the searches' own target lengths."""
    from ropelab import recipe
    from ropelab.flows.pipeline import fitness_of
    from ropelab.models import load_model
    from ropelab.tasks.export import lambda_spec
    from ropelab.tasks.search import space_for

    result, _ = first
    cfg, finetuned = smoke(), result.finetuned[1]
    long = lambda_spec(result.stage2.lam, finetuned)
    fitness = fitness_of(cfg, result.stage1, result.stage2, result.recovery, long)
    base, tuned = load_model(result.base.path)[0], load_model(finetuned.path)[0]
    runs = [(base, recipe.search1(cfg, r)) for r in cfg.pipeline.ratios] + [(tuned, recipe.search2(cfg))]
    runs.append((tuned, recipe.recovery(cfg, 1.0, long["attention_factor"])))
    assert fitness == tuple((space_for(m, v.search).target_length, v.search.num_windows, v.search.seed)
                            for m, v in runs)
    assert [n for n, _, _ in fitness] == [128, 256, 512, 64]
    choice = result.short_choice
    assert choice.windows == "8 validation windows of 64 tokens sharing no token with the 4 searches' fitness windows"
    assert choice.validation_ppl["recovery"] != result.recovery[1.0].validation_ppl["winner"]  # other windows


def test_second_run_is_all_cache_hits_with_the_same_mlflow_view(first):
    from ropelab.flows.pipeline import pipeline_flow

    result, before = first
    again = pipeline_flow(smoke())
    assert snapshot() == before  # no stage produced anything new, no candidate evaluated again
    assert (again.export.path, again.export.identity()) == (result.export.path, result.export.identity())
    first_view, second_view = stage_view(result.run_id), stage_view(again.run_id)
    assert set(first_view) == set(second_view)
    for name, (metrics, _) in first_view.items():
        stable = {k: v for k, v in metrics.items() if not k.endswith("seconds")}
        assert {k: v for k, v in second_view[name][0].items() if not k.endswith("seconds")} == stable, name
    assert {tag for _, tag in second_view.values()} == {"hit"}
    assert {tag for _, tag in first_view.values()} >= {"miss"}


def test_an_eval_setting_recomputes_evaluation_only(first):
    from ropelab.flows.pipeline import pipeline_flow

    result, _ = first
    again = pipeline_flow(derive(smoke(), eval={"num_windows": 4}))
    view = stage_view(again.run_id)
    evaluations = {n for n in view if n.startswith("evaluate")}
    assert evaluations and all(view[n][1] == "miss" for n in evaluations)
    assert all(tag == "hit" for n, (_, tag) in view.items() if n not in evaluations and n != "base"), view
    assert view["base"][1] in ("hit", "partial")  # pretraining reused; only the base's held-out score is redone
    assert again.base.path == result.base.path


def test_rerun_from_recovery_recomputes_it_and_downstream_only(first):
    from ropelab.flows.pipeline import pipeline_flow

    _, before = first
    pipeline_flow(smoke(), rerun_from="recovery")
    after = snapshot()
    assert after["models"] == before["models"] and after["finetune"] == before["finetune"]
    assert len(after["eval"]) >= len(before["eval"]) + 4  # base, fine-tuned, CLEX, PI evaluations ran again
    assert after["fitness"] == before["fitness"]  # …answered by the fitness cache: never paid twice
    for name, (mode, written) in after["written"].items():
        rewritten = written != before["written"][name][1]
        assert rewritten == (mode == "recovery"), name


def test_clex_stage_is_trained_exported_and_compared(first):
    from ropelab.clex.io import is_clex_export, load_clex
    from ropelab.tasks import tracking

    result, _ = first
    clex = result.clex
    assert is_clex_export(clex.path) and all(p.exists() for p in clex.plots)
    history = tracking.client().get_metric_history(clex.run_id, "clex/loss")
    assert len(history) >= 2 and all(h.value == h.value for h in history)  # logged, finite
    stock = AutoModelForCausalLM.from_pretrained(clex.path).eval()  # stock transformers accepts the export
    assert stock.config.rope_parameters["rope_type"] == "default"
    load_clex(clex.path, stock)
    assert type(stock.model.rotary_emb).__name__ == "ClexRotaryEmbedding"
    rows = result.combined
    pis = ["pi-4x fine-tuned at 64", "pi-4x fine-tuned at 256"]  # CLEX's training length; its serving length
    assert {"clex", *pis, "finetuned:progressive", "base:yarn"} <= set(rows)
    assert set(rows["clex"]) == {64, 128, 256, 512, 1024}
    # the PI export's config records only its extended length: evaluated at multiples of the base L all the same
    assert all(set(rows[pi]) == set(rows["clex"]) for pi in pis)
    assert "| clex |" in result.summary and all(f"| {pi} |" in result.summary for pi in pis)


def test_research_short_attention_is_searched_evaluated_and_exported_as_lossy(first):
    """pipeline.short_attention = one: recovery searched and the pair evaluated with attention factor 1 up to L;
    the export records the rule as lossy, so the headline puts the in-memory numbers beside the stock ones."""
    from ropelab.flows.pipeline import pipeline_flow

    result, _ = first
    again = pipeline_flow(derive(smoke(), pipeline={"short_attention": "one"}))
    assert any("attention factor 1 up to L" in note for note in again.export.lossy)
    assert again.in_memory is not None and "; in memory, with what the export drops (" in again.summary
    assert json.loads((again.export.path / "ropelab_export.json").read_text())["short_attention"] == "one"
    recovery = json.loads(again.recovery[1.0].lam.read_text())
    assert recovery["attention_factor"] == 1.0 and "short-input attention: 1 up to L" in again.summary
    beyond = [n for n in again.combined["finetuned:progressive"] if n > 64]
    assert all(again.combined["finetuned:progressive_recovery"][n] == again.combined["finetuned:progressive"][n]
               for n in beyond)  # the long set beyond L, whatever the rule


@pytest.mark.parametrize("override,message", [
    ("pipeline.recovery_ratios=[1, 2]", "pipeline.recovery_ratios must be [1]: transformers' longrope uses the short "
                                        "set only up to L"),
    ("pipeline.short_attention=research", "pipeline.short_attention"),
])
def test_unusable_recovery_ratios_and_unknown_attention_rules_are_one_line(override, message):
    from ropelab.errors import RopelabError

    with pytest.raises(RopelabError, match=re.escape(message)) as err:
        load_config(resolve_config("smoke"), [override])
    assert "\n" not in str(err.value)


def test_unknown_rerun_stage_is_a_clear_error():
    from ropelab.errors import RopelabError
    from ropelab.flows.pipeline import refresh_from

    with pytest.raises(RopelabError, match="stages: base, longrope2, search1"):
        refresh_from("warmup")


def test_longrope2_runs_beside_the_progressive_recipe_on_the_same_budget_and_is_compared(first):
    result, _ = first
    v2 = result.longrope2
    assert v2 is not None and v2.tokens == result.progressive_tokens == 3072
    assert v2.search.variant == "longrope2" and v2.search.critical_dim in (3, 5)
    section = result.summary.split("## LongRoPE vs LongRoPE2")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in section.splitlines() if line.startswith("| LongRoPE")}
    assert set(rows) == {"LongRoPE (progressive)", "LongRoPE2 (longrope2 + mixed windows)"}
    v1_table = result.reports["finetuned"].table["progressive_recovery"]
    assert rows["LongRoPE (progressive)"][0] == "3072"
    assert rows["LongRoPE (progressive)"][2] == f"{v1_table[512]:.3f}"  # PPL at the final length (8L = 512 too)
    assert rows["LongRoPE2 (longrope2 + mixed windows)"][2] == f"{v2.report.table['native'][512]:.3f}"
    assert rows["LongRoPE2 (longrope2 + mixed windows)"][3] == f"{v2.report.needle['native'][512]:.3f}"
    assert "longrope2" in result.combined and "LongRoPE2 search: critical dim" in section

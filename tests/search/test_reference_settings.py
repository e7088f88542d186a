"""evo_scale semantics, YaRN β of the seeds and the baseline, exact seeds, the config choices (issue 14, items 2, 5).

Ports: genetic_base.py GeneticAlgorithm.__init__ (the count scaling) and evolution/search.py + rope/yarn.py (the
YaRN seed and its β), microsoft/LongRoPE main @ c9e56aa54007c328399677232a489feec446e4b8.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from ropelab import config
from ropelab.config import SearchConfig, load_config
from ropelab.errors import RopelabError
from ropelab.eval import zoo
from ropelab.rope.adapter import RopeBasics
from ropelab.rope.methods import rope_frequencies, yarn
from ropelab.search import evolution, operators
from ropelab.search.evolution import EvolutionConfig, evolve
from ropelab.search.space import SearchSpace, exact_seeds, seed_vectors

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DIM_MONO_JSON = {"evo_scale": 1.0, "population_size": 64, "max_time_budget": 40, "mutation_numbers": 16,
                 "crossover_size": 16, "max_crossover_try": 20, "parents_size": 32, "list_step": 0.01}


def reference_counts(evo_scale: float, hyper_params: dict) -> dict[str, int]:
    """genetic_base.py GeneticAlgorithm.__init__ @ c9e56aa (default_hyper_params/dim_mono.json)."""
    return {"population": int(evo_scale * hyper_params["population_size"]),
            "iterations": int(evo_scale * hyper_params["max_time_budget"]),
            "mutations": int(evo_scale * hyper_params["mutation_numbers"]),
            "crossovers": int(evo_scale * hyper_params["crossover_size"]),
            "crossover_passes": int(evo_scale * hyper_params["max_crossover_try"]),
            "parents": int(evo_scale * hyper_params["parents_size"])}


# rope/yarn.py @ c9e56aa ("copy from https://github.com/jquesnelle/yarn")
def find_correction_dim(num_rotations, dim, base=10000, max_position_embeddings=2048):
    return (dim * math.log(max_position_embeddings / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def find_correction_range(low_rot, high_rot, dim, base=10000, max_position_embeddings=2048):
    low = math.floor(find_correction_dim(low_rot, dim, base, max_position_embeddings))
    high = math.ceil(find_correction_dim(high_rot, dim, base, max_position_embeddings))
    return max(low, 0), min(high, dim - 1)


def linear_ramp_mask(min, max, dim):  # noqa: A002  (the reference's names)
    if min == max:
        max += 0.001
    return torch.clamp((torch.arange(dim, dtype=torch.float32) - min) / (max - min), 0, 1)


def reference_yarn_seed(dim, base, original_length, scale, beta_fast, beta_slow) -> np.ndarray:
    """evolution/search.py main() @ c9e56aa: the YaRN mask of YaRNScaledRotaryEmbedding, factor blended."""
    low, high = find_correction_range(beta_fast, beta_slow, dim, base, original_length)
    inv_freq_mask = (1 - linear_ramp_mask(low, high, dim // 2).float()) * 1  # extrapolation_factor 1
    return (scale * (1 - inv_freq_mask) + 1.0 * inv_freq_mask).numpy()


# ------------------------------------------------------------------------------------------ item 2: evo_scale


@pytest.mark.parametrize("scale", [0.1, 0.125, 0.25, 0.29, 0.3, 0.5, 0.7, 1.0, 1.5])
def test_code_rule_scales_the_six_counts_as_the_reference(scale):
    ours = EvolutionConfig(scale=scale, scale_rule="code").counts()
    assert ours == reference_counts(scale, DIM_MONO_JSON)


def test_round_rule_is_ropelabs_and_differs_where_int_truncates():
    assert EvolutionConfig(scale=0.3).counts() == {"population": 19, "iterations": 40, "mutations": 5,
                                                   "crossovers": 5, "crossover_passes": 20, "parents": 10}
    assert reference_counts(0.3, DIM_MONO_JSON)["mutations"] == 4  # int(4.8)


def test_code_rule_runs_the_scaled_generations_and_refuses_zero_parents():
    space = SearchSpace(32, 10000.0, 8.0, 256)
    flat = lambda batch: [1.0] * len(batch)  # noqa: E731
    for rule, generations in (("code", 6), ("round", 12)):
        cfg = EvolutionConfig(iterations=12, scale=0.5, scale_rule=rule)
        assert evolve(flat, space, cfg, np.random.default_rng(0), seeds=seed_vectors(space)).generation == generations
    with pytest.raises(RopelabError, match=r"evo_scale 0.03 with evo_scale_rule code leaves parents int\(0.03·32\) = 0"):
        EvolutionConfig(scale=0.03, scale_rule="code").counts()


def test_the_search_tasks_follow_the_rule_and_record_the_shortfall():
    from ropelab.tasks.search import Generation, evolution_config, generation_series, planned_generations

    assert planned_generations(SearchConfig(iterations=12, evo_scale=0.5, evo_scale_rule="code")) == 6
    assert planned_generations(SearchConfig(iterations=12, evo_scale=0.5)) == 12
    cfg = evolution_config(SearchConfig(crossover="code", mutation_retry="code", start_token_search="trial"))
    assert (cfg.crossover, cfg.mutation_retry, cfg.start_token_search) == ("code", "code", "trial")
    generations = [Generation(Path(), "", g, 1.0, 1.0, 8, Path(), False, short) for g, short in ((0, 0), (1, 3))]
    series = {s.name: s.points for s in generation_series(generations)}
    assert series["search/children_missing"] == ((0, 0.0), (1, 3.0))


# ------------------------------------------------------------------------------------------ item 5: β, exact seeds


def test_the_code_seed_takes_the_betas_and_equals_the_reference_for_mistral():
    space = SearchSpace(head_dim=128, base=10000.0, scale=32.0, original_max_position_embeddings=4096)
    mistral = seed_vectors(space, "code", beta_fast=128.0, beta_slow=2.0)["yarn-factor"]
    np.testing.assert_allclose(mistral, reference_yarn_seed(128, 10000.0, 4096, 32.0, 128, 2), rtol=1e-6)
    llama = seed_vectors(space, "code")["yarn-factor"]
    np.testing.assert_allclose(llama, reference_yarn_seed(128, 10000.0, 4096, 32.0, 32, 1), rtol=1e-6)
    assert not np.allclose(mistral, llama)


def test_the_paper_yarn_seed_takes_the_betas():
    space = SearchSpace(head_dim=128, base=10000.0, scale=32.0, original_max_position_embeddings=4096)
    seed = seed_vectors(space, "paper", 128.0, 2.0)["yarn"]
    inv_freq, _ = yarn(head_dim=128, base=10000.0, factor=32.0, original_max_position_embeddings=4096,
                       beta_fast=128.0, beta_slow=2.0)
    np.testing.assert_allclose(seed, (rope_frequencies(128, 10000.0) / inv_freq).double().numpy(), rtol=1e-6)
    assert not np.allclose(seed, seed_vectors(space, "paper")["yarn"])


def test_the_yarn_baseline_takes_the_betas():
    basics = RopeBasics(head_dim=128, base=10000.0, original_max_position_embeddings=8192)
    default, _ = zoo.baseline("yarn")(8192 * 16, basics)
    mistral, _ = zoo.baseline("yarn", (128.0, 2.0))(8192 * 16, basics)
    assert (default.beta_fast, default.beta_slow, mistral.beta_fast, mistral.beta_slow) == (32.0, 1.0, 128.0, 2.0)
    assert not torch.allclose(default.compute()[0], mistral.compute()[0])
    assert zoo.baseline("pi")(8192 * 16, basics)[0].beta_fast is None


def test_betas_come_from_the_config_and_the_mistral_preset_uses_the_references():
    assert (SearchConfig().yarn_beta_fast, SearchConfig().yarn_beta_slow) == (32.0, 1.0)
    assert (config.EvalConfig().yarn_beta_fast, config.EvalConfig().yarn_beta_slow) == (32.0, 1.0)
    mistral = load_config(CONFIGS / "mistral-7b.yaml").search
    assert (mistral.yarn_beta_fast, mistral.yarn_beta_slow) == (128.0, 2.0)
    assert load_config(CONFIGS / "llama2-7b.yaml").search.yarn_beta_fast == 32.0


def test_exact_seeds_are_the_seeds_before_the_grid():
    space = SearchSpace(32, 10000.0, 8.0, 256)
    seeds = seed_vectors(space)
    snapped = {name: space.candidate(values) for name, values in seeds.items()}
    exact = exact_seeds(space, seeds, snapped)
    assert set(exact) == {"ntk", "yarn"}  # PI at s = 8 is on the grid already
    for name, candidate in exact.items():
        np.testing.assert_allclose(candidate.rescale_factors, seeds[name])  # within the bounds: untouched
        gap = np.abs(np.subtract(candidate.rescale_factors, snapped[name].rescale_factors))
        assert 0 < gap.max() <= space.step / 2 + 1e-9
    tight = SearchSpace(32, 10000.0, 8.0, 256, max_rescale=2.0)  # exact, but still inside the search's bounds
    assert max(exact_seeds(tight, seeds, {k: tight.candidate(v) for k, v in seeds.items()})["ntk"].rescale_factors) == 2.0


# ------------------------------------------------------------------------------------------ choices


def test_the_config_choices_are_the_ones_the_search_dispatches_on():
    assert typing.get_args(config.Crossover) == operators.CROSSOVERS == tuple(operators.CROSSOVER_FUNCTIONS)
    assert typing.get_args(config.MutationRetry) == operators.MUTATION_RETRIES
    assert typing.get_args(config.StartTokenSearch) == operators.START_TOKEN_SEARCHES
    assert typing.get_args(config.EvoScaleRule) == evolution.SCALE_RULES
    with pytest.raises(RopelabError, match="search crossover must be one of uniform, code, got 'swap'"):
        EvolutionConfig(crossover="swap")

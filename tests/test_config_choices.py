"""Every choice field, range and path-like name is validated at load: one line naming key, value and valid values.

The choice fields are discovered from the config's type hints, so a new Literal field is covered without
editing this file."""

from __future__ import annotations

import dataclasses
import pickle
import typing
from pathlib import Path

import pytest

from ropelab._validation import choices
from ropelab.config import (
    RESERVED_DATA_NAMES,
    EvalMethod,
    FinetuneMethod,
    RunConfig,
    build,
    derive,
    load_config,
    to_dict,
)
from ropelab.errors import RopelabError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def choice_fields(cls=RunConfig, prefix: str = "") -> dict[str, list[str]]:
    """Dotted key -> valid values, for every Literal field (or tuple of Literals) in the config tree."""
    found = {}
    for f in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls, include_extras=True)[f.name]
        if dataclasses.is_dataclass(kind):
            found |= choice_fields(kind, f"{prefix}{f.name}.")
        elif choices(kind):
            found[f"{prefix}{f.name}"] = choices(kind)
    return found


CHOICES = choice_fields()
# the values the tasks and library dispatch on today
EXPECTED = {
    "search.mode": ["extend", "recovery"], "search.bounds": ["paper", "code"], "search.seeds": ["paper", "code"],
    "search.start_tokens": ["none", "paper", "code"], "search.attention_policy": ["su", "yarn", "none"],
    "eval.protocol": ["truncated", "sliding"], "eval.split": ["test", "validation"],
    "eval.methods": ["none", "pi", "ntk", "dynamic", "yarn", "llama3", "ntk_cd", "yarn_cd", "native"],
    "finetune.method": ["longrope", "none", "pi", "ntk", "dynamic", "yarn", "llama3", "ntk_cd", "yarn_cd"],
    "clex.activation": ["tanh", "silu"], "clex.positions": ["random", "uniform", "chunks"],
    "clex.backend": ["rk4", "torchdiffeq"],
}


def one_line_error(*overrides: str, path=None) -> str:
    with pytest.raises(RopelabError) as caught:
        load_config(path, list(overrides))
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_discovery_finds_every_choice_field_the_stages_use():
    assert set(EXPECTED) <= set(CHOICES)


def test_the_choices_are_exactly_what_the_stages_accept():
    """Discovery above covers new fields; this pins the values the tasks and library dispatch on today."""
    assert {key: CHOICES[key] for key in EXPECTED} == EXPECTED


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_a_misspelled_choice_is_one_line_naming_key_value_and_every_valid_value(key):
    message = one_line_error(f"{key}=bogus")  # a scalar for a list field is a one-item list
    assert message.startswith(f"config: {key}: 'bogus' is not one of ")
    assert message.removeprefix(f"config: {key}: 'bogus' is not one of ").split(", ") == CHOICES[key]


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_every_valid_choice_loads(key):
    for choice in CHOICES[key]:
        loaded = load_config(None, [f"{key}={choice}"])
        section, name = key.rsplit(".", 1)
        got = getattr(getattr(loaded, section), name)
        assert got == ((choice,) if isinstance(got, tuple) else choice)


@pytest.mark.parametrize("override,message", [
    ("pretrain.steps=0", "pretrain.steps must be ≥ 1, got 0"),
    ("finetune.train.batch_size=0", "finetune.train.batch_size must be ≥ 1, got 0"),
    ("clex.train.grad_accum=0", "clex.train.grad_accum must be ≥ 1, got 0"),
    ("pretrain.seq_len=1", "pretrain.seq_len must be ≥ 2, got 1"),
    ("finetune.train.lr=0", "finetune.train.lr must be > 0, got 0"),
    ("model.context_length=1", "model.context_length must be ≥ 2, got 1"),
    ("model.num_attention_heads=0", "model.num_attention_heads must be ≥ 1, got 0"),
    ("eval.num_windows=0", "eval.num_windows must be ≥ 1, got 0"),
    ("eval.stride=0", "eval.stride must be ≥ 1, got 0"),
    ("eval.passkey_trials=-1", "eval.passkey_trials must be ≥ 0, got -1"),
    ("eval.original_length=-1", "eval.original_length must be ≥ 0, got -1"),
    ("eval.passkey_depths=[0.5, 1.5]", "eval.passkey_depths must be ≤ 1, got 1.5"),
    ("search.num_windows=0", "search.num_windows must be ≥ 1, got 0"),
    ("search.test_windows=0", "search.test_windows must be ≥ 1, got 0"),
    ("search.population=0", "search.population must be ≥ 1, got 0"),
    ("search.parents=0", "search.parents must be ≥ 1, got 0"),
    ("search.iterations=-1", "search.iterations must be ≥ 0, got -1"),
    ("search.mutations=-1", "search.mutations must be ≥ 0, got -1"),
    ("search.mutation_probability=1.5", "search.mutation_probability must be ≤ 1, got 1.5"),
    ("search.evo_scale=0", "search.evo_scale must be > 0, got 0"),
    ("search.scale=0.5", "search.scale must be ≥ 1, got 0.5"),
    ("search.max_rescale=0.5", "search.max_rescale must be 0 (off) or ≥ 1, got 0.5"),
    ("clex.max_t=0", "clex.max_t must be ≥ 1, got 0"),
    ("clex.time_dt=0", "clex.time_dt must be > 0, got 0"),
    ("clex.time_dt=2", "clex.time_dt must be ≤ 1, got 2"),
    ("clex.chunks=1", "clex.chunks must be ≥ 2, got 1"),
    ("clex.amplification=0", "clex.amplification must be ≥ 1, got 0"),
    ("clex.compare_pi_scale=0.5", "clex.compare_pi_scale must be 0 (off) or ≥ 1, got 0.5"),
    ("pipeline.ratios=[8]", "pipeline.ratios must be two stage-1 ratios r1, r2 > 1, got [8.0]"),
    ("pipeline.recovery_ratios=[0.5]", "pipeline.recovery_ratios must be ≥ 1, got 0.5"),  # not also "empty"
])
def test_out_of_range_values_are_one_line_naming_key_limit_and_value(override, message):
    assert one_line_error(override) == f"config: {message}"


@pytest.mark.parametrize("override,message", [
    ("search.scale=fast", "search.scale: expected a number, got 'fast'"),
    ("pretrain.lr=true", "pretrain.lr: expected a number, got True"),
    ("pretrain.steps=many", "pretrain.steps: expected an integer, got 'many'"),
    ("pretrain.steps=true", "pretrain.steps: expected an integer, got True"),
    ("pretrain.steps='3'", "pretrain.steps: expected an integer, got '3'"),
    ("pretrain.steps=2.5", "pretrain.steps: expected an integer, got 2.5"),
    ("model.trust_remote_code=1", "model.trust_remote_code: expected true or false, got 1"),
    ("model.source=3", "model.source: expected a string, got 3"),
    ("finetune.train=3", "finetune.train: expected a mapping, got 3"),
])
def test_wrong_types_are_one_line(override, message):
    assert one_line_error(override) == f"config: {message}"


def test_unknown_keys_name_the_section_and_its_valid_keys():
    message = one_line_error("finetune.train.stepz=3", "finetune.train.lrr=1")
    assert message == ("config: finetune.train: unknown key(s) stepz, lrr; valid keys: steps, batch_size, grad_accum, "
                       "seq_len, lr, min_lr_ratio, warmup_steps, weight_decay, grad_clip, checkpoint_every, seed")
    assert one_line_error("serch.scale=2").startswith("config: unknown key(s) serch; valid keys: preset, experiment,")


def test_several_problems_are_one_line_joined_by_semicolons_and_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("search:\n  start_tokens: papr\n  scale: 0.5\npretrain:\n  stepz: 1\n")
    assert one_line_error(path=path) == (  # in the config's field order
        f"{path}: pretrain: unknown key(s) stepz; valid keys: steps, batch_size, grad_accum, seq_len, lr, "
        "min_lr_ratio, warmup_steps, weight_decay, grad_clip, checkpoint_every, seed; search.scale must be ≥ 1, "
        "got 0.5; search.start_tokens: 'papr' is not one of none, paper, code")


def test_malformed_yaml_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1, 2\n")
    assert one_line_error(path=path).startswith(f"{path}: not valid YAML (")


@pytest.mark.parametrize("key", ["preset", "experiment", "data.name"])
@pytest.mark.parametrize("value", ["x/../../escape", "..", "a..b", "/abs", ".hidden", "a b", "x\\\\y"])
def test_names_that_become_paths_cannot_escape_the_home(key, value):
    assert one_line_error(f"{key}={value}").startswith(f"config: {key}: {value!r} must be a plain name")


@pytest.mark.parametrize("name", [*RESERVED_DATA_NAMES, "MLflow"])
def test_the_data_directory_cannot_take_a_folder_the_home_already_uses(name):
    assert one_line_error(f"data.name={name}") == (
        f"config: data.name must not be a folder the project home uses (configs, mlflow, artifacts), got {name!r}")


@pytest.mark.parametrize("key,value", [("data.name", "data-smoke"), ("preset", "llama2-7b"),
                                       ("experiment", "ropelab_v1.2"), ("data.name", "mlflow-data")])
def test_plain_names_load(key, value):
    section, _, name = key.rpartition(".")
    cfg = load_config(None, [f"{key}={value}"])
    assert getattr(getattr(cfg, section) if section else cfg, name) == value


def test_floats_accept_yaml_1_1_exponents_and_lists_accept_a_scalar():
    cfg = load_config(None, ["pretrain.lr=1e-3", "data.sources=austen", "eval.length_multipliers=2"])
    assert (cfg.pretrain.lr, cfg.data.sources, cfg.eval.length_multipliers) == (1e-3, ("austen",), (2,))


def test_a_partial_nested_section_keeps_its_parents_defaults():
    cfg = load_config(None, ["finetune.train.steps=3"])
    assert cfg.finetune.train.steps == 3
    assert (cfg.finetune.train.seq_len, cfg.finetune.train.batch_size, cfg.finetune.train.lr) == (1024, 4, 2e-4)
    assert (cfg.clex.train.seq_len, cfg.pretrain.seq_len) == (4096, 256)  # each parent's own default
    assert build(RunConfig, {"finetune": {"train": {"steps": 3}}}) == cfg


def test_derive_gives_a_validated_stage_view():
    cfg = load_config(CONFIGS / "smoke.yaml")
    view = derive(cfg, search={"scale": 2.0}, finetune={"method": "pi", "train": {"seq_len": 1024}})
    assert (view.search.scale, view.finetune.method, view.finetune.train.seq_len) == (2.0, "pi", 1024)
    assert view.finetune.train.lr == cfg.finetune.train.lr and view.search.seeds == cfg.search.seeds
    assert (cfg.search.scale, cfg.finetune.train.seq_len) == (4.0, 1024)  # the original is untouched
    assert derive(cfg) == cfg


@pytest.mark.parametrize("sections,message", [
    ({"search": {"start_tokens": "papr"}}, "config: search.start_tokens: 'papr' is not one of none, paper, code"),
    ({"finetune": {"train": {"steps": 0}}}, "config: finetune.train.steps must be ≥ 1, got 0"),
    ({"search": {"scal": 2}}, "config: search: unknown key(s) scal; valid keys: scale, mode,"),
    ({"finetune": {"train": {"stepz": 2}}}, "config: finetune.train: unknown key(s) stepz; valid keys: steps,"),
    ({"serch": {"scale": 2}}, "config: unknown section 'serch'; valid sections: data, model,"),
    ({"preset": "x"}, "config: unknown section 'preset'"),
    ({"search": 3}, "config: search: expected a mapping"),
])
def test_derive_refuses_what_load_refuses(sections, message):
    with pytest.raises(RopelabError) as caught:
        derive(load_config(None), **sections)
    assert str(caught.value).startswith(message) and len(str(caught.value).splitlines()) == 1


def test_configs_stay_frozen_comparable_and_picklable():
    cfg = load_config(CONFIGS / "smoke.yaml")
    assert pickle.loads(pickle.dumps(cfg)) == cfg and repr(pickle.loads(pickle.dumps(cfg))) == repr(cfg)
    assert dataclasses.replace(cfg.search, scale=2.0).scale == 2.0
    assert [f.name for f in dataclasses.fields(cfg.data)][0] == "name" and cfg.data.name == "data-smoke"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.search.scale = 2.0  # type: ignore[misc]


def test_the_method_choices_match_the_zoo_and_the_clex_modules():
    from ropelab.clex import ode, train
    from ropelab.config import ACTIVATIONS, BACKENDS, POSITION_SCHEMES, AttentionPolicy, Bounds
    from ropelab.eval.zoo import BASELINES
    from ropelab.rope.methods import ATTENTION_POLICIES
    from ropelab.search.space import BOUNDS

    assert set(typing.get_args(EvalMethod)) == set(BASELINES) | {"native"}
    assert set(typing.get_args(FinetuneMethod)) == set(BASELINES) | {"longrope"}
    assert set(ode.ACTIVATIONS) == set(ACTIVATIONS)  # ode maps the names to modules
    assert typing.get_args(AttentionPolicy) == ATTENTION_POLICIES and typing.get_args(Bounds) == BOUNDS
    assert ode.BACKENDS is BACKENDS and train.POSITION_SCHEMES is POSITION_SCHEMES  # imported, not copied


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_preset_loads_and_round_trips(preset):
    cfg = load_config(CONFIGS / preset)
    assert cfg.preset == preset.removesuffix(".yaml")
    assert to_dict(derive(cfg)) == to_dict(cfg) and build(RunConfig, to_dict(cfg)) == cfg

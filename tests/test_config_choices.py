"""Every choice field, range and path-like name is validated at load: one line naming key, value and valid values.

The choice fields are discovered from the config's type hints, so a new Literal field is covered without
editing this file."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from ropelab.config import EvalMethod, FinetuneMethod, RunConfig, _choices, derive, load_config, to_dict
from ropelab.errors import RopelabError
from ropelab.tasks.home import preset_names, resolve_config


def choice_fields(cls=RunConfig, prefix: str = "") -> dict[str, list[str]]:
    found = {}
    for f in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls, include_extras=True)[f.name]
        if dataclasses.is_dataclass(kind):
            found |= choice_fields(kind, f"{prefix}{f.name}.")
        elif _choices(kind):
            found[f"{prefix}{f.name}"] = _choices(kind)
    return found


CHOICES = choice_fields()


def test_discovery_finds_every_choice_field_the_stages_use():
    assert {"search.start_tokens", "search.bounds", "search.seeds", "search.attention_policy", "search.mode",
            "eval.protocol", "eval.split", "eval.methods", "finetune.method", "clex.positions", "clex.activation",
            "clex.backend"} <= set(CHOICES)


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_a_misspelled_choice_is_one_line_naming_key_value_and_every_valid_value(key):
    value = "[bogus]" if key == "eval.methods" else "bogus"
    with pytest.raises(RopelabError) as caught:
        load_config(None, [f"{key}={value}"])
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and key in message and "'bogus'" in message
    assert all(choice in message for choice in CHOICES[key])


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_every_valid_choice_loads(key):
    for choice in CHOICES[key]:
        value = f"[{choice}]" if key == "eval.methods" else choice
        loaded = load_config(None, [f"{key}={value}"])
        section, name = key.rsplit(".", 1)
        got = getattr(getattr(loaded, section), name)
        assert got == ((choice,) if key == "eval.methods" else choice)


@pytest.mark.parametrize("override,message", [
    ("pretrain.steps=0", "pretrain.steps must be ≥ 1, got 0"),
    ("search.num_windows=0", "search.num_windows must be ≥ 1, got 0"),
    ("search.mutation_probability=1.5", "search.mutation_probability must be ≤ 1"),
    ("search.scale=0.5", "search.scale must be ≥ 1"),
    ("clex.time_dt=0", "clex.time_dt must be > 0"),
    ("eval.passkey_trials=-1", "eval.passkey_trials must be ≥ 0"),
    ("finetune.train.lr=0", "finetune.train.lr must be > 0"),
    ("pipeline.ratios=[8]", "pipeline.ratios must be two stage-1 ratios"),
    ("search.scale=fast", "search.scale: expected a number, got 'fast'"),
    ("pretrain.stepz=3", "pretrain: unknown key(s) stepz; valid keys: steps, batch_size"),
])
def test_out_of_range_wrong_type_and_unknown_keys_are_one_line(override, message):
    with pytest.raises(RopelabError, match=None) as caught:
        load_config(None, [override])
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("key", ["preset", "experiment", "data.name"])
@pytest.mark.parametrize("value", ["x/../../escape", "..", "/abs", ".hidden"])
def test_names_that_become_paths_cannot_escape_the_home(key, value):
    with pytest.raises(RopelabError, match="must be a plain name"):
        load_config(None, [f"{key}={value}"])


def test_a_partial_nested_section_keeps_its_parents_defaults():
    cfg = load_config(None, ["finetune.train.steps=3"])
    assert cfg.finetune.train.steps == 3 and cfg.finetune.train.seq_len == 1024  # FinetuneConfig's default train
    assert cfg.pretrain.seq_len == 256  # TrainConfig's own


def test_derive_gives_a_validated_stage_view():
    cfg = load_config(resolve_config("smoke"))
    view = derive(cfg, search={"scale": 2.0}, finetune={"train": {"steps": 7}})
    assert view.search.scale == 2.0 and view.finetune.train.steps == 7 and view.search.seeds == cfg.search.seeds
    assert cfg.search.scale == 4.0  # the original is untouched (frozen)
    with pytest.raises(RopelabError, match="search.start_tokens"):
        derive(cfg, search={"start_tokens": "papr"})
    with pytest.raises(RopelabError, match="unknown key 'scal'"):
        derive(cfg, search={"scal": 2})


def test_the_method_choices_match_the_zoo_and_the_clex_modules():
    from ropelab.clex.ode import ACTIVATIONS
    from ropelab.config import ACTIVATIONS as CONFIG_ACTIVATIONS
    from ropelab.eval.zoo import BASELINES

    assert set(typing.get_args(EvalMethod)) == set(BASELINES) | {"native"}
    assert set(typing.get_args(FinetuneMethod)) == set(BASELINES) | {"longrope"}
    assert set(ACTIVATIONS) == set(CONFIG_ACTIVATIONS)


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_loads_and_round_trips(name):
    cfg = load_config(resolve_config(name))
    assert cfg.preset == name
    assert to_dict(derive(cfg)) == to_dict(cfg)

"""Config: presets load, unknown keys list the valid ones, overrides apply with types checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from ropelab.config import RunConfig, explain, flatten, load_config, to_dict
from ropelab.errors import RopelabError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_loads(preset):
    cfg = load_config(CONFIGS / preset)
    assert isinstance(cfg, RunConfig) and cfg.preset == preset.removesuffix(".yaml")


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pretrain:\n  stepz: 3\n")
    with pytest.raises(RopelabError, match=r"c.yaml: pretrain: unknown key\(s\) stepz; valid keys: steps, batch_size"):
        load_config(path)


def test_overrides_are_typed_and_nested():
    cfg = load_config(CONFIGS / "tiny.yaml", ["pretrain.steps=7", "pretrain.lr=1e-3", "data.sources=[a, b]"])
    assert cfg.pretrain.steps == 7 and cfg.pretrain.lr == 1e-3 and cfg.data.sources == ("a", "b")
    with pytest.raises(RopelabError, match="expected a number"):
        load_config(CONFIGS / "tiny.yaml", ["pretrain.lr=fast"])
    with pytest.raises(RopelabError, match="expected an integer"):
        load_config(CONFIGS / "tiny.yaml", ["pretrain.steps=many"])
    with pytest.raises(RopelabError, match="key.path=value"):
        load_config(None, ["pretrain.steps"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RopelabError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(RopelabError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_and_flatten():
    cfg = load_config(CONFIGS / "smoke.yaml")
    assert load_config(None, [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                              for k, v in flatten(to_dict(cfg)).items()]) == cfg
    assert any(line.startswith("pretrain.steps = 1000: optimiser steps") for line in explain())


def test_partial_nested_override_keeps_the_sections_own_defaults():
    cfg = load_config(None, ["finetune.train.steps=3"])
    assert cfg.finetune.train.steps == 3
    assert (cfg.finetune.train.seq_len, cfg.finetune.train.batch_size) == (1024, 4)  # finetune's, not TrainConfig's
    assert cfg.pretrain.seq_len == 256

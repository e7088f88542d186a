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


def test_a_preset_extends_the_preset_beside_it(tmp_path):
    from ropelab.tasks.home import resolve_config

    v2 = load_config(resolve_config("tiny-longrope2"))
    tiny = load_config(resolve_config("tiny"))
    assert v2.preset == "tiny-longrope2" and v2.pipeline.longrope2 and not v2.pipeline.clex
    assert v2.model == tiny.model and v2.pretrain == tiny.pretrain and v2.search.scale == tiny.search.scale
    assert v2.eval.needle_samples == 8 and v2.eval.num_windows == tiny.eval.num_windows
    (tmp_path / "a.yaml").write_text("extends: b\nsearch:\n  scale: 3.0\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(RopelabError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere\n")
    with pytest.raises(RopelabError, match="no .*nowhere.yaml"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: ../d\n")
    with pytest.raises(RopelabError, match="extends must name a preset"):
        load_config(tmp_path / "d.yaml")

"""Content identities: equal content → equal identity, any change → another one; artifacts by content only."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ropelab import identity
from ropelab.artifacts import ModelArtifact
from ropelab.config import load_config


def test_model_fingerprint_follows_weights_and_config_not_notes(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    before = identity.model_fingerprint(tmp_path)
    (tmp_path / "training.json").write_text("{'seconds': 3}")  # notes beside the model change nothing
    assert identity.model_fingerprint(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    assert identity.model_fingerprint(tmp_path) != before


def test_json_identity_is_canonical_and_sees_every_field():
    a, b = load_config(None, []), load_config(None, [])
    assert identity.json_identity(a) == identity.json_identity(b)
    assert identity.json_identity(a) != identity.json_identity(load_config(None, ["search.attention_policy=none"]))
    assert identity.json_identity({"x": 1, "y": 2}) == identity.json_identity({"y": 2, "x": 1})


def test_an_artifact_is_identified_by_content_not_path_or_run():
    one = ModelArtifact(Path("/a/model"), "f00", "d1", run_id="r1")
    moved = ModelArtifact(Path("/elsewhere/model"), "f00", "d1", run_id="r2", consumed=("r0",))
    assert identity.json_identity({"model": one}) == identity.json_identity({"model": moved})
    assert identity.json_identity({"model": one}) != identity.json_identity(
        {"model": ModelArtifact(Path("/a/model"), "f01", "d1")})


def test_tensor_identity_sees_values_shape_and_dtype():
    t = torch.arange(6)
    assert identity.tensor_identity(t) == identity.tensor_identity(torch.arange(6))
    assert identity.tensor_identity(t) != identity.tensor_identity(t.reshape(2, 3))
    assert identity.tensor_identity(t) != identity.tensor_identity(t.float())


def test_code_version_follows_the_installed_sources(tmp_path, monkeypatch):
    package = tmp_path / "fakepkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "mod.py").write_text("x = 1\n")
    (package / "skipped.py").write_text("y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fakepkg", None)
    before = identity.code_version(["fakepkg"], exclude=["fakepkg.skipped"])
    (package / "skipped.py").write_text("y = 2\n")
    assert identity.code_version(["fakepkg"], exclude=["fakepkg.skipped"]) == before
    (package / "sub" / "mod.py").write_text("x = 2\n")
    assert identity.code_version(["fakepkg"], exclude=["fakepkg.skipped"]) != before


def test_the_package_code_version_covers_library_and_tasks_but_not_flows():
    files = identity._module_files("ropelab") | identity._module_files("ropelab.tasks")
    assert "ropelab.tasks.runner" in files and "ropelab.search.evolution" in files
    assert any(name.startswith("ropelab.flows") for name in identity._module_files("ropelab.flows"))

"""The export task carries the export's notes (exact, but not as the method's own stock type) into the artifact
and its MLflow record, beside the lossy list: a user reading the run sees how the factors were written."""

from __future__ import annotations

from ropelab.artifacts import ModelArtifact
from ropelab.data.tokenizer import ByteTokenizer
from ropelab.rope import RopeSpec
from ropelab.tasks.export import export_final
from tests.rope.test_families import BASE, L, build


def test_the_export_records_its_notes(tmp_path):
    model = build("phi3", original_max_position_embeddings=L)
    model.save_pretrained(tmp_path / "phi3")
    ByteTokenizer().save(tmp_path / "phi3")
    artifact = ModelArtifact(tmp_path / "phi3", "f" * 64, "data")
    yarn = RopeSpec("yarn", 32, BASE, factor=4.0, original_max_position_embeddings=L).to_dict()
    exported = export_final.fn(artifact, yarn, None, "notes-test")
    assert exported.rope_parameters["rope_type"] == "longrope" and not exported.lossy
    assert any("written as longrope factor sets" in note for note in exported.notes)
    assert "written as longrope factor sets" in exported.record().tags["export.notes"]

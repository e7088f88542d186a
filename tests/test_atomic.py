"""ropelab.atomic: a writer that fails half way leaves the previous content or nothing, never a torn file."""

from __future__ import annotations

import io
import os

import pytest

from ropelab import atomic
from ropelab.atomic import replacing, staged_directory, write_bytes_atomic, write_text_atomic


class DiskFull(OSError):
    pass


def fail_half_way(monkeypatch) -> None:
    """Make ropelab.atomic's file writes put half the bytes on disk, then raise (a full disk, a kill)."""
    real_open = open

    class HalfWriter(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[: len(data) // 2])
            raise DiskFull("disk full")

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode or "x" in mode:
            return HalfWriter(path, mode.replace("b", "").replace("t", ""))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)


def test_failure_inside_staged_directory_leaves_no_target_and_no_partial(tmp_path):
    target = tmp_path / "export"
    with pytest.raises(RuntimeError, match="boom"):
        with staged_directory(target) as staging:
            (staging / "weights.bin").write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_staged_directory_replaces_the_target_and_clears_a_stale_partial(tmp_path):
    target = tmp_path / "export"
    (target).mkdir()
    (target / "old.txt").write_text("old")
    stale = tmp_path / "export.partial"
    stale.mkdir()
    (stale / "leftover").write_text("from a killed run")
    with staged_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_write_text_atomic_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_text_atomic(path, '{"generation": 1}')
    fail_half_way(monkeypatch)
    with pytest.raises(DiskFull):
        write_text_atomic(path, '{"generation": 2, "population": [1, 2, 3]}')
    assert path.read_text() == '{"generation": 1}'  # the previous content, whole
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind


def test_a_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    fail_half_way(monkeypatch)
    with pytest.raises(DiskFull):
        write_bytes_atomic(tmp_path / "sub" / "blob.bin", b"0123456789")
    assert list((tmp_path / "sub").iterdir()) == []


def test_writes_create_parents_keep_usual_permissions_and_may_fsync(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    path = write_text_atomic(tmp_path / "a" / "b.txt", "λ = 1.5\n", fsync=True)
    assert path.read_text(encoding="utf-8") == "λ = 1.5\n"
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777  # not mkstemp's 0600


def test_replacing_removes_the_temporary_file_when_the_writer_raises(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with replacing(path) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]

"""Staged run folders: a run appears only when it succeeds."""

from __future__ import annotations

import pytest

from fedshaver.results import StagedFolder, staged_folder, unique_run_path


def test_commit_creates_the_final_folder(tmp_path):
    final = tmp_path / "run"
    with staged_folder(final) as folder:
        (folder.path / "table.csv").write_text("a\n1\n")
        assert not final.exists()
    assert (final / "table.csv").read_text() == "a\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_failure_leaves_nothing(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with staged_folder(final) as folder:
            (folder.path / "half.csv").write_text("a\n")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_commit_into_existing_folder_replaces_entries(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    (final / "keep.txt").write_text("old")
    (final / "table.csv").write_text("old")
    folder = StagedFolder(final)
    (folder.path / "table.csv").write_text("new")
    (folder.path / "sub").mkdir()
    folder.commit()
    assert (final / "keep.txt").read_text() == "old"
    assert (final / "table.csv").read_text() == "new"
    assert (final / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_commit_into_empty_existing_folder(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    folder = StagedFolder(final)
    (folder.path / "a.txt").write_text("x")
    assert folder.commit() == final
    assert (final / "a.txt").read_text() == "x"


def test_unique_run_path_skips_taken_names(tmp_path):
    first = unique_run_path(tmp_path, "exp")
    first.mkdir()
    second = unique_run_path(tmp_path, "exp")
    assert second != first
    assert not second.exists()
    assert second.name.startswith("exp-")

from __future__ import annotations

from pathlib import Path

import pytest

from qfleet.errors import InputError
from qfleet.outputs import atomic_output_dir, read_json, sha256_file, write_json


def test_success_renames_into_place_and_replaces_old(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_output_dir(out) as staging:
        assert staging != out
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or backup left


def test_failure_leaves_nothing_and_keeps_previous(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError), atomic_output_dir(fresh) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert not fresh.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "good.txt").write_text("good")
    with pytest.raises(RuntimeError), atomic_output_dir(kept):
        raise RuntimeError("boom")
    assert (kept / "good.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(InputError, match="not a directory"), atomic_output_dir(target):
        pass


def test_json_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_json(path, {"b": 1, "a": [1.5]})
    assert read_json(path) == {"a": [1.5], "b": 1}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json is not readable JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(InputError, match="does not exist"):
        read_json(tmp_path / "missing.json")
    assert sha256_file(path) == sha256_file(path) and len(sha256_file(path)) == 64

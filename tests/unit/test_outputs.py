"""One rule for a tool's output folder (``longred_pl/outputs.py``)."""

from __future__ import annotations

import pytest

from longred_pl.errors import UserError
from longred_pl.outputs import check_output, replace_output, staged_output


def test_new_or_empty_folder_is_taken(tmp_path):
    assert check_output(tmp_path / "new", False, "--out") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", False, "--out") == tmp_path / "empty"


def test_non_empty_folder_is_refused_and_kept(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(
        UserError, match=r"--out: '.*' is not empty; pass a new directory, or --overwrite"
    ):
        check_output(tmp_path, False, "--out")
    assert (tmp_path / "old.json").exists()


def test_overwrite_replaces_the_folder_whole_when_written(tmp_path):
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "old.png").write_bytes(b"x")
    path = check_output(out, True, "--out")
    assert (out / "plots" / "old.png").exists()  # nothing removed before the results exist
    replace_output(path)
    assert out.is_dir() and not any(out.iterdir())


def test_an_input_inside_the_output_is_refused(tmp_path):
    model = tmp_path / "run" / "student"
    model.mkdir(parents=True)
    with pytest.raises(UserError, match=r"OUT: '.*run' holds model 1 \(.*student\)"):
        check_output(tmp_path / "run", True, "OUT", {"model 1": str(model)})


def test_a_file_or_the_working_directory_is_refused(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_output(tmp_path / "f", False, "--out")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="refusing to empty"):
        check_output(tmp_path, True, "--out")


def test_staged_output_replaces_on_success_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(KeyboardInterrupt), staged_output(out) as stage:
        (stage / "half.tar").write_bytes(b"x")
        raise KeyboardInterrupt  # Ctrl-C halfway
    assert not (tmp_path / "a").exists()  # the folders this run created went with it
    (out / "old").mkdir(parents=True)
    (out / "old" / "file").write_text("old")
    with pytest.raises(RuntimeError), staged_output(out) as stage:
        (stage / "new").write_text("new")
        raise RuntimeError
    assert [p.name for p in out.iterdir()] == ["old"]  # the earlier output, as it was
    with staged_output(out) as stage:
        (stage / "new").write_text("new")
        (stage / "dir").mkdir()
    assert sorted(p.name for p in out.iterdir()) == ["dir", "new"]
    assert (out / "new").read_text() == "new"

"""One run, one folder (``longred_pl/runs.py``): the pure decisions."""

from __future__ import annotations

import os
import time

import pytest
import torch

from longred_pl import runs
from longred_pl.errors import UserError


def _trainer(root, dirpath=None, export=None, logger_dir=None):
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(dirpath or root / "checkpoints")},
        }
    ]
    if export:
        callbacks.append(
            {"class_path": "longred_pl.export.ExportStudent", "init_args": {"dirpath": str(export)}}
        )
    logger = None
    if logger_dir:
        logger = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(logger_dir)},
        }
    return {"default_root_dir": str(root), "callbacks": callbacks, "logger": logger}


def _ckpt(path, mtime):
    torch.save({"step": 1}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_run_folders_are_the_outputs_not_the_root(tmp_path):
    trainer = _trainer(tmp_path / "run", export=tmp_path / "student", logger_dir=tmp_path / "run")
    assert [f for _, f in runs.run_folders(trainer)] == [
        tmp_path / "run" / "checkpoints",
        tmp_path / "student",
        tmp_path / "run" / "lightning_logs",
    ]
    # Lightning's own defaults write versioned folders that never mix
    assert runs.run_folders({"default_root_dir": str(tmp_path)}) == []


def test_newest_complete_checkpoint_skips_truncated_and_empty(tmp_path):
    now = time.time()
    old = _ckpt(tmp_path / "epoch=0-step=2.ckpt", now - 100)
    newer = _ckpt(tmp_path / "epoch=0-step=4.ckpt", now - 50)
    truncated = tmp_path / "epoch=0-step=6.ckpt"
    truncated.write_bytes(newer.read_bytes()[:-40])  # a save cut off before its zip directory
    (tmp_path / "epoch=0-step=8.ckpt").write_bytes(b"")
    assert runs.is_complete(old) and not runs.is_complete(truncated)
    assert runs.newest_checkpoint([tmp_path]) == newer


def test_distributed_checkpoint_is_complete_with_its_metadata(tmp_path):
    sharded = tmp_path / "last.ckpt"
    sharded.mkdir()
    (sharded / "__0_0.distcp").write_bytes(b"x")
    assert not runs.is_complete(sharded)
    (sharded / ".metadata").write_bytes(b"x")
    assert runs.newest_checkpoint([tmp_path]) == sharded


def test_resolve_last_and_auto(tmp_path):
    trainer = _trainer(tmp_path)
    with pytest.raises(
        UserError, match=r"ckpt_path: 'last' found no complete checkpoint in .*checkpoints"
    ):
        runs.resolve_ckpt_path("last", trainer)
    assert runs.resolve_ckpt_path("auto", trainer)[0] is None
    assert runs.resolve_ckpt_path("some.ckpt", trainer) == ("some.ckpt", None)
    (tmp_path / "checkpoints").mkdir()
    found = _ckpt(tmp_path / "checkpoints" / "last.ckpt", time.time())
    for word in ("last", "auto"):
        assert runs.resolve_ckpt_path(word, trainer)[0] == str(found)


def test_new_run_into_a_used_folder_is_refused_naming_the_ways_on(tmp_path):
    run = tmp_path / "run"
    (run / "teacher").mkdir(parents=True)  # inputs beside the outputs are not the run's
    (run / "checkpoints").mkdir()
    config = run / "checkpoints" / "config.yaml"
    config.write_text("x: 1\n")
    trainer = _trainer(run)
    assert runs.check_new_run(trainer, None, False, keep=[config]) is None  # its own config only
    (run / "checkpoints" / "last.ckpt").write_bytes(b"old")
    expected = (
        r"ModelCheckpoint dirpath: '.*checkpoints' already holds .*--ckpt_path auto.*--overwrite"
    )
    with pytest.raises(UserError, match=expected):
        runs.check_new_run(trainer, None, False, keep=[config])
    assert runs.check_new_run(trainer, "x.ckpt", False) is None  # resuming writes into its run
    note = runs.check_new_run(trainer, None, True, keep=[config])
    assert "emptied" in note
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["config.yaml"]
    assert (run / "teacher").is_dir()


def test_overwrite_never_removes_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "data.txt").write_text("precious")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="refusing to remove"):
        runs.check_new_run(_trainer(tmp_path, dirpath=tmp_path), None, True)
    assert (tmp_path / "data.txt").read_text() == "precious"


def test_only_the_launching_rank_checks(tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "old.ckpt").write_text("x")
    trainer = _trainer(tmp_path)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runs.check_new_run(trainer, None, False) is None
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError):
        runs.check_new_run(trainer, None, False)


def test_config_files():
    argv = ["--config", "a.yaml", "-c", "b.yaml", "--config=c.yaml", "--trainer.x", "1"]
    assert [str(p) for p in runs.config_files(argv)] == ["a.yaml", "b.yaml", "c.yaml"]

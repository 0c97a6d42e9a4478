"""A checkpoint save that runs out of space: one line naming the folder and the space, the
previous checkpoint intact and complete, nothing partial left behind."""

import errno
import os

import fsspec.implementations.local as local
import pytest
import torch
from tests_helpers import fit_config

from longred_pl.cli import main
from longred_pl.errors import UserError
from longred_pl.runs import is_complete


def test_enospc_on_save_fails_on_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, tiny_llama, tiny_shards, monkeypatch
):
    write = local.LocalFileOpener.write

    def full_disk(self, data):  # the disk fills while the step-2 checkpoint is written
        if "step=2" in str(self.path):
            write(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, data)

    monkeypatch.setattr(local.LocalFileOpener, "write", full_disk)
    config = fit_config(tmp_path, tiny_llama, tiny_shards, max_steps=3, every=1)
    with pytest.raises(UserError) as caught:
        main(["fit", "--config", config, "--trainer.limit_val_batches", "0"])
    message = str(caught.value)
    assert "\n" not in message
    assert f"checkpoint save: no space left in {tmp_path / 'ckpt'} (" in message
    assert "the newest checkpoint there (epoch=0-step=1.ckpt) takes" in message
    assert os.listdir(tmp_path / "ckpt") == ["epoch=0-step=1.ckpt"]  # no partial file
    previous = tmp_path / "ckpt" / "epoch=0-step=1.ckpt"
    assert is_complete(previous)
    assert torch.load(previous, weights_only=True)["global_step"] == 1

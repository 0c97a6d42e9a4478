"""`longred fit` twice with one config: refused, resumed with `--ckpt_path auto`, or replaced
whole with `--overwrite`; never a second run's files next to the first's."""

import os

import pytest
import torch
from tests_helpers import fit_config

from longred_pl.cli import main
from longred_pl.errors import UserError


def _names(folder):
    return sorted(os.listdir(folder))


def test_second_run_refused_resumed_or_replaced(tmp_path, tiny_llama, tiny_shards, capsys):
    config = fit_config(tmp_path, tiny_llama, tiny_shards, max_steps=2)
    main(["fit", "--config", config, "--trainer.limit_val_batches", "0"])
    first = _names(tmp_path / "ckpt")
    assert first == ["epoch=0-step=2.ckpt"]

    with pytest.raises(
        UserError, match=r"already holds a run's files.*--ckpt_path auto.*--overwrite"
    ):
        main(["fit", "--config", config, "--trainer.limit_val_batches", "0"])
    assert _names(tmp_path / "ckpt") == first  # nothing written, nothing lost

    main(
        [
            "fit",
            "--config",
            config,
            "--ckpt_path",
            "auto",
            "--trainer.max_steps",
            "4",
            "--trainer.limit_val_batches",
            "0",
        ]
    )
    assert "resuming from" in capsys.readouterr().err
    assert _names(tmp_path / "ckpt") == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    resumed = torch.load(tmp_path / "ckpt" / "epoch=0-step=4.ckpt", weights_only=True)
    assert resumed["MixedLengthDataModule"]["consumed"] == 16  # 4 steps x 4 micro-steps

    main(["fit", "--config", config, "--overwrite", "--trainer.limit_val_batches", "0"])
    assert _names(tmp_path / "ckpt") == ["epoch=0-step=2.ckpt"]  # the old run's step 4 is gone
    assert os.path.exists(config)  # the command's own config stays
    assert _names(tmp_path / "lightning_logs") == ["version_0"]  # one run's logs, not three


def test_ckpt_path_last_without_a_checkpoint_is_an_error(tmp_path, tiny_llama, tiny_shards):
    config = fit_config(tmp_path, tiny_llama, tiny_shards, max_steps=2)
    with pytest.raises(
        UserError, match=r"ckpt_path: 'last' found no complete checkpoint in .*ckpt"
    ):
        main(["fit", "--config", config, "--ckpt_path", "last"])

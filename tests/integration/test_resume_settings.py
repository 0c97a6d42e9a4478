"""`longred fit --ckpt_path` with changed settings: refused or honoured, never silent."""

import glob
import subprocess
import sys

import pytest
import yaml
from tests_helpers import fit_config

from longred_pl.cli import main
from longred_pl.errors import UserError


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama, tiny_shards):
    root = tmp_path_factory.mktemp("resume_settings")
    config = fit_config(root, tiny_llama, tiny_shards, max_steps=2, every=2)
    main(["fit", "--config", config, "--trainer.limit_val_batches", "0"])
    (ckpt,) = glob.glob(str(root / "ckpt" / "*step=2.ckpt"))
    return root, config, ckpt


def test_changed_recipe_flag_is_refused(run):
    _, config, ckpt = run
    with pytest.raises(UserError, match=r"model.short_weight=50.0 \(checkpoint: 5.0\)"):
        main(
            [
                "fit",
                "--config",
                config,
                "--ckpt_path",
                ckpt,
                "--model.short_weight",
                "50",
                "--trainer.max_steps",
                "3",
            ]
        )


def test_changed_config_value_is_refused(run, tmp_path):
    _, config, ckpt = run
    data = yaml.safe_load(open(config))
    data["model"]["distill_layers"] = [2]
    data["model"]["rope_kwargs"] = {"rope_theta": 80000.0}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"rope_kwargs=.*80000.*distill_layers=\[2\]"):
        main(["fit", "--config", str(changed), "--ckpt_path", ckpt])


def test_runtime_setting_is_honoured_and_said(run, capsys):
    _, config, ckpt = run
    main(
        [
            "fit",
            "--config",
            config,
            "--ckpt_path",
            ckpt,
            "--model.loss_chunk_size",
            "7",
            "--trainer.max_steps",
            "3",
            "--trainer.limit_val_batches",
            "0",
        ]
    )
    assert (
        "model.loss_chunk_size: 7 (this run) instead of the checkpoint's 1024"
        in capsys.readouterr().err
    )


def test_truncated_checkpoint_names_the_file(run, tmp_path):
    _, config, ckpt = run
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(open(ckpt, "rb").read()[:5000])
    with pytest.raises(UserError, match=r"cut.ckpt is not a readable checkpoint.*truncated"):
        main(["fit", "--config", config, "--ckpt_path", str(cut)])


def test_console_prints_one_line(run):
    """The shell sees one line and exit status 2, no traceback."""
    _, config, ckpt = run
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from longred_pl.cli import console; console()",
            "fit",
            "--config",
            config,
            "--ckpt_path",
            ckpt,
            "--model.s2l_weight",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("longred: error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and "model.s2l_weight=1.0" in errors[0]
    assert "Traceback" not in proc.stderr


def test_missing_checkpoint_is_refused_before_the_models_load(run, tmp_path):
    _, config, _ = run
    with pytest.raises(UserError, match=r"ckpt_path: '.*nope.ckpt' does not exist"):
        main(["fit", "--config", config, "--ckpt_path", str(tmp_path / "nope.ckpt")])

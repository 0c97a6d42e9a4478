"""SIGKILL mid-run: every checkpoint left loads and is consistent; resuming from the last
one ends with the same weights as an uninterrupted run."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import torch
from tests_helpers import fit_config

from longred_pl.cli import main

HERE = os.path.dirname(__file__)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_llama, tiny_shards):
    full = tmp_path / "full"
    main(["fit", "--config", fit_config(full, tiny_llama, tiny_shards, max_steps=6, every=1)])

    killed = tmp_path / "killed"
    config = fit_config(killed, tiny_llama, tiny_shards, max_steps=6, every=1, slow=0.3)
    env = {**os.environ, "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "longred_pl.cli", "fit", "--config", config],
        cwd=killed,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not glob.glob(str(killed / "ckpt" / "*step=3.ckpt")) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    ckpts = sorted(glob.glob(str(killed / "ckpt" / "*.ckpt")))
    assert ckpts and not glob.glob(str(killed / "ckpt" / "*step=6.ckpt"))
    for path in ckpts:  # whatever the kill interrupted, what is there loads and is right
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        step = int(re.search(r"step=(\d+)", path).group(1))
        assert ckpt["global_step"] == step
        assert ckpt["MixedLengthDataModule"]["consumed"] == 4 * step
    last = max(ckpts, key=lambda p: int(re.search(r"step=(\d+)", p).group(1)))

    resumed = tmp_path / "resumed"
    main(
        [
            "fit",
            "--config",
            fit_config(resumed, tiny_llama, tiny_shards, max_steps=6, every=1),
            "--ckpt_path",
            last,
        ]
    )
    want = torch.load(glob.glob(str(full / "ckpt" / "*step=6.ckpt"))[0], weights_only=True)[
        "state_dict"
    ]
    got = torch.load(glob.glob(str(resumed / "ckpt" / "*step=6.ckpt"))[0], weights_only=True)[
        "state_dict"
    ]
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)

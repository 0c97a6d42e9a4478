"""A scheduler's SIGTERM on 2 CPU processes (DDP): a checkpoint at the next optimizer-step
boundary, exit 75 (requeue); the same command with ``--ckpt_path auto`` ends with the
weights of an uninterrupted run."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import torch
import yaml
from tests_helpers import fit_config

from longred_pl.preemption import REQUEUE_EXIT

HERE = os.path.dirname(__file__)
REPO = os.path.dirname(os.path.dirname(HERE))
DDP = {
    "class_path": "lightning.pytorch.strategies.DDPStrategy",
    "init_args": {"process_group_backend": "gloo", "find_unused_parameters": True},
}


def _config(root, tiny_llama, tiny_shards, marker=None):
    path = fit_config(
        root,
        tiny_llama,
        tiny_shards,
        max_steps=4,
        every=1,
        devices=2,
        strategy=DDP,
        limit_val_batches=0,
    )
    config = yaml.safe_load(open(path))
    config["trainer"]["logger"] = False
    if marker:
        config["trainer"]["callbacks"] += [
            {"class_path": "killable.Slow", "init_args": {"seconds": 0.5}},
            {"class_path": "killable.StepMarker", "init_args": {"dirpath": str(marker)}},
        ]
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    return path


def _fit(config, *extra, wait=True):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "longred_pl.cli", "fit", "--config", config, *extra]
    proc = subprocess.Popen(
        cmd,
        cwd=os.path.dirname(config),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if wait:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-3000:]
        proc.err = err.decode()
    return proc


def _weights(folder, step):
    (path,) = glob.glob(str(folder / f"*step={step}.ckpt"))
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sigterm_saves_at_a_step_boundary_then_the_same_command_resumes(
    tmp_path, tiny_llama, tiny_shards
):
    full = tmp_path / "full"
    _fit(_config(full, tiny_llama, tiny_shards))

    run, marker = tmp_path / "run", tmp_path / "marks"
    config = _config(run, tiny_llama, tiny_shards, marker=marker)
    proc = _fit(config, "--ckpt_path", "auto", wait=False)
    deadline = time.time() + 300
    while not (marker / "step=1").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does: every process of the job
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    assert proc.returncode == REQUEUE_EXIT, err[-3000:]
    (saved,) = glob.glob(str(run / "ckpt" / "preempted-step=*.ckpt"))
    step = int(re.search(r"step=(\d+)", saved).group(1))
    assert 1 <= step < 4 and f"SIGTERM: saved {saved}" in err
    ckpt = torch.load(saved, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == step  # a step boundary: 4 micro-steps per optimizer step
    assert ckpt["MixedLengthDataModule"]["consumed"] == 4 * step

    again = _fit(config, "--ckpt_path", "auto")  # the requeued job: the same command
    assert f"resuming from {saved}" in again.err  # the newest complete checkpoint
    want, got = _weights(full / "ckpt", 4), _weights(run / "ckpt", 4)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)

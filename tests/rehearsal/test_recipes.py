"""Every shipped recipe, rehearsed as written: fit, validate, checkpoint, resume, export.

One test per (fit config, trainer config) pair that a config header or a trainer config's
launch line names (``recipes.pairs``), on a tiny model of the teacher's family with every
length scaled by one factor, on at most 2 CPU processes with gloo (``recipes`` docstring
says what a rehearsal changes; nothing else is). Each one:

1. ``longred fit`` with the config files as a user passes them, plus the rehearsal's
   override file: one optimizer step (the config's accumulation and clipping), a
   validation where the config validates, a checkpoint;
2. the same command with ``--ckpt_path`` that checkpoint and ``max_steps: 2``: the second
   optimizer step, from the restored weights, optimizer, schedule and data position;
3. ``longred export`` of the checkpoint: a Hugging Face directory that loads, with the
   student's window, and whose weights are the checkpoint's student.
"""

from __future__ import annotations

import math

import pytest
import recipes
import torch

PAIRS, SAME = recipes.pairs()


def _id(pair: tuple[str, str | None]) -> str:
    fit, trainer = pair
    name = fit.removeprefix("configs/").removesuffix(".yaml")
    return f"{name}+{trainer.rsplit('/', 1)[-1].removesuffix('.yaml')}" if trainer else name


def test_every_fit_config_and_trainer_config_is_rehearsed():
    """No shipped fit config and no trainer config is left out of the rehearsal."""
    fits = {
        str(p.relative_to(recipes.ROOT))
        for p in recipes.CONFIGS.rglob("*.yaml")
        if recipes.is_fit_config(p)
    }
    trainers = {
        str(p.relative_to(recipes.ROOT)) for p in (recipes.CONFIGS / "trainer").glob("*.yaml")
    }
    assert fits and fits <= {f for f, _ in PAIRS}
    rehearsed = {t for _, t in PAIRS if t} | {t for _, t in SAME}
    assert trainers == rehearsed, "a trainer config that no launch line pairs"
    assert all(PAIRS.count(same) == 1 for same in SAME.values())


def _step_rows(out, key="train/loss"):
    return {int(r["step"]): r for r in recipes.metrics(out) if r.get(key)}


@pytest.mark.parametrize("pair", PAIRS, ids=[_id(p) for p in PAIRS])
def test_recipe_rehearsal(pair, tmp_path):
    from longred_pl.export import export_checkpoint, load_checkpoint, student_state_from_checkpoint

    rehearsal = recipes.plan(*pair, tmp_path)
    fit = rehearsal.run()
    assert fit.returncode == 0, fit.stderr[-4000:]
    assert sorted(_step_rows(tmp_path)) == [0], f"optimizer steps: {sorted(_step_rows(tmp_path))}"
    if rehearsal.validates:
        val = [
            r
            for r in recipes.metrics(tmp_path)
            if any(k.startswith("val/ppl") and v for k, v in r.items())
        ]
        assert val, "the config validates, but no val/ppl_* was logged"
    ckpt = tmp_path / "checkpoints" / "epoch=0-step=1.ckpt"
    assert ckpt.exists(), sorted(p.name for p in (tmp_path / "checkpoints").iterdir())

    resumed = rehearsal.run("--trainer.max_steps", "2", "--ckpt_path", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    steps = _step_rows(tmp_path)
    assert sorted(steps) == [0, 1], f"steps logged by the fit and its resume: {sorted(steps)}"
    for row in steps.values():
        assert recipes.finite(row["train/loss"]) and recipes.finite(row["train/grad_norm"])

    student = export_checkpoint(str(ckpt), str(tmp_path / "export"))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student, local_files_only=True)
    assert model.config.max_position_embeddings == rehearsal.override["model"]["target_length"]
    saved = student_state_from_checkpoint(load_checkpoint(str(ckpt)))
    exported = model.state_dict()
    for name, value in saved.items():
        torch.testing.assert_close(exported[name].float(), value.float(), rtol=0, atol=0)
    logits = model(torch.arange(8)[None] % recipes.VOCAB).logits
    assert math.isfinite(float(logits.float().abs().max()))

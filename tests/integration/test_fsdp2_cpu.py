"""FSDP2 (ModelParallelStrategy, fully_shard) on 2 CPU processes with gloo.

The two ranks read *distinct* samples and draw CREAM skipped ids from their own rank,
so a data-split or rank-seed bug changes the result. The reference is data parallelism
simulated in one process: each rank's batches (the data module built for that rank),
each rank's ids (drawn from (seed, micro-step, rank), as specified), the gradients
averaged over ranks, one AdamW step per 4 micro-steps. Losses, weights and the held-out
perplexity measured by the sharded run on both ranks must equal the simulation's.
"""

import csv
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from longred_pl.data.prepare import write_shards
from longred_pl.export import export_checkpoint, load_checkpoint

LENGTHS = {"long": 256, "short": 16, "s2l": 64}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("fsdp2")
    rng = np.random.default_rng(0)
    for name, length in {**LENGTHS, "val_short": 64, "val_long": 256}.items():
        write_shards(
            [rng.integers(0, 128, size=length) for _ in range(9 if name.startswith("val") else 8)],
            root / name,
            length,
            samples_per_shard=2,
            pack=False,
            vocab_size=128,
            tokenizer_name="random",
            source="tests",
        )
    return root, tiny_llama


MODEL = {
    "target_length": 256,
    "rope_kwargs": {"rope_theta": 40000.0},
    "distill_layers": [1, 2],
    "s2l_positions": "cream",
    "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
}
BATCH = {"long": 1, "short": 2, "s2l": 2, "val_short": 2, "val_long": 1}


def data_config(root):
    lengths = {**LENGTHS, "val_short": 64, "val_long": 256}
    return {
        **{
            k: {"urls": str(root / k), "seq_len": n, "batch_size": BATCH[k]}
            for k, n in lengths.items()
        },
        "schedule": ["long", "s2l", "long", "short"],
        "num_workers": 0,
        "shuffle_buffer": 1,
        "val_batches": None,
    }


def run_fit(
    root, teacher, out, devices, max_steps, ckpt_path=None, strategy=None, model=None, trainer=None
):
    """``longred fit`` of the tiny recipe; ``strategy`` replaces FSDP2 when ``devices > 1``."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": devices,
            "max_steps": max_steps,
            "accumulate_grad_batches": 4,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "val_check_interval": 4 * max_steps,
            "check_val_every_n_epoch": None,
            "default_root_dir": str(out),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(out)},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(out / "ckpt"),
                        "every_n_train_steps": 2,
                        "save_top_k": -1,
                    },
                },
                {
                    "class_path": "longred_pl.export.ExportStudent",
                    "init_args": {"dirpath": str(out / "student")},
                },
            ],
        },
        "model": MODEL | {"teacher_path": teacher} | (model or {}),
        "data": data_config(root),
    }
    config["trainer"].update(trainer or {})
    if devices > 1:
        config["trainer"]["strategy"] = strategy or {
            "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
            "init_args": {"data_parallel_size": devices, "tensor_parallel_size": 1},
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "longred_pl.cli", "fit", "--config", str(out / "config.yaml")]
    if ckpt_path:
        cmd += ["--ckpt_path", ckpt_path]
    rehearsal = os.path.join(os.path.dirname(__file__), os.pardir, "rehearsal")  # CPUFSDPStrategy
    path = os.pathsep.join([os.path.abspath(rehearsal), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(out):
    (path,) = glob.glob(str(out / "**" / "metrics.csv"), recursive=True)
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    return {
        (int(r["step"]), k): float(v)
        for r in rows
        for k, v in r.items()
        if (k.startswith("train/loss") or k == "train/grad_norm") and v
    }


def simulate_data_parallel(
    root, teacher, world=2, steps=4, accumulate=4, weight_decay=0.01, clip=None
):
    """One process doing what ``world`` data-parallel ranks do; returns losses, weights, ppl.

    AdamW (lr 1e-3, ``weight_decay`` on matrices only); gradients clipped to a total norm of
    ``clip`` (over the whole student) before each step when given.
    """
    from types import SimpleNamespace

    from longred_pl.data.datamodule import MixedLengthDataModule
    from longred_pl.data.shards import StreamConfig
    from longred_pl.module import LongReDModule
    from longred_pl.positions import cream_position_ids, mix_seed

    torch.manual_seed(0)
    init = {k: v for k, v in MODEL.items() if k != "optimizer"}
    module = LongReDModule(
        teacher_path=teacher,
        **init,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=weight_decay),
    )
    module.configure_model()
    opt = module.configure_optimizers()
    cfg = data_config(root)
    loaders, seen = [], {}
    for rank in range(world):
        streams = {k: StreamConfig(**cfg[k]) for k in (*LENGTHS, "val_short", "val_long")}
        dm = MixedLengthDataModule(
            **streams, schedule=cfg["schedule"], num_workers=0, shuffle_buffer=1, val_batches=None
        )
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, training=True)
        loaders.append((iter(dm.train_dataloader()), dm.val_dataloader()))
    logged = {}
    for step in range(steps):
        sums = {}
        for _ in range(accumulate):
            for rank, (train, _) in enumerate(loaders):
                batch = next(train)
                rows = seen.setdefault((rank, batch["kind"]), [])
                rows.extend(bytes(row.numpy()) for row in batch["input_ids"])
                if batch["kind"] == "s2l":
                    gen = torch.Generator().manual_seed(mix_seed(0, int(batch["index"]), rank))
                    batch["position_ids"] = cream_position_ids(*batch["input_ids"].shape, 256, gen)
                loss, term = module.compute_loss(batch)
                (loss / (accumulate * world)).backward()
                key = batch["kind"]
                sums.setdefault(key, []).append(float(term))
        norm = torch.nn.utils.clip_grad_norm_(module.student.parameters(), clip or float("inf"))
        logged[(step, "train/grad_norm")] = float(norm)
        opt.step()
        opt.zero_grad()
        for kind, values in sums.items():
            logged[(step, f"train/loss_{kind}")] = sum(values) / len(values)
    for kind in LENGTHS:  # within an epoch (8 samples), the ranks' shares are disjoint
        first = [set(seen[(rank, kind)][: 8 // world]) for rank in range(world)]
        assert len(first[0]) == 8 // world and not first[0] & first[-1] or world == 1, kind
    module.eval()
    ppl = {}
    for loader_idx, kind in enumerate(("short", "long")):  # val_dataloader order
        nll = [module.token_nll(b["input_ids"]) for _, vals in loaders for b in vals[loader_idx]]
        ppl[kind] = float(torch.cat([n.reshape(-1) for n in nll]).mean().exp())
    return logged, module.state_dict(), ppl


def test_fsdp2_two_processes_match_simulated_data_parallel_and_resume(setup, tmp_path):
    root, teacher = setup
    run_fit(root, teacher, tmp_path / "fsdp2", 2, 4)
    expected, weights, ppl = simulate_data_parallel(root, teacher)
    sharded = losses(tmp_path / "fsdp2")
    for key, value in expected.items():
        assert sharded[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert expected[(0, "train/loss_s2l")] > 1e-7  # CREAM ids: the s2l term is not 0

    (path,) = glob.glob(str(tmp_path / "fsdp2" / "**" / "metrics.csv"), recursive=True)
    rows = [r for r in csv.DictReader(open(path)) if r.get("val/ppl_short")]
    assert rows  # validation ran on both ranks (every rank runs the same number of batches)
    for kind in ("short", "long"):  # token-weighted over both ranks' samples
        assert float(rows[-1][f"val/ppl_{kind}"]) == pytest.approx(ppl[kind], rel=1e-4), kind

    (dcp,) = glob.glob(str(tmp_path / "fsdp2" / "ckpt" / "*step=4.ckpt"))
    assert os.path.isdir(dcp)  # a sharded (distributed) checkpoint
    full = load_checkpoint(dcp)
    assert not any("teacher" in k for k in full["state_dict"])
    for key, value in weights.items():
        torch.testing.assert_close(full["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export_checkpoint(dcp, str(tmp_path / "hf")))
    assert model.config.max_position_embeddings == 256
    at_fit_end = AutoModelForCausalLM.from_pretrained(
        tmp_path / "fsdp2" / "student"
    )  # ExportStudent, gathered
    for (name, a), (_, b) in zip(model.state_dict().items(), at_fit_end.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)

    (half,) = glob.glob(str(tmp_path / "fsdp2" / "ckpt" / "*step=2.ckpt"))
    run_fit(root, teacher, tmp_path / "resumed", 2, 4, ckpt_path=half)
    (resumed,) = glob.glob(str(tmp_path / "resumed" / "ckpt" / "*step=4.ckpt"))
    again = load_checkpoint(resumed)
    assert again["MixedLengthDataModule"]["consumed"] == 16
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(again["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)

"""`longred fit` with the shipped W&B logger config, offline: what the run directory holds.

``configs/logger/wandb.yaml`` is composed after a tiny fit config, as its header says, with
``WANDB_MODE=offline`` and every W&B directory under a temporary one (nothing is uploaded,
nothing lands in the home directory). Offline, wandb (0.31 here) writes the metrics and
config only into the run's transaction log ``run-<id>.wandb``, the file ``wandb sync``
uploads later: ``files/wandb-summary.json`` and ``files/config.yaml`` appear only when a
run syncs, and wandb ships no Python reader for the log. So the test reads it: LevelDB-style 32 KiB blocks of records (7-byte header: CRC32C,
little-endian length, type FULL/FIRST/MIDDLE/LAST) after the 7-byte file header
``:W&B`` + 0xBEE1 + version 0, each record a ``wandb_internal_pb2.Record`` protobuf.
Skipped where wandb (the `wandb` extra) is not installed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("wandb", reason="needs wandb: pip install 'longred_pl[wandb]'")

from conftest import save_tiny_llama, write_tiny_shards  # noqa: E402

from longred_pl.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WANDB_HEADER = b":W&B\xe1\xbe\x00"
BLOCK, FULL, LAST = 32 * 1024, 1, 4
METRICS = (
    "train/loss",
    "train/loss_long",
    "train/loss_short",
    "train/loss_s2l",
    "train/skipped_steps",
    "val/loss_short",
    "val/ppl_short",
    "val/ppl_short_teacher",
    "val/ppl_retention",
)


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a ``.wandb`` transaction log, in order (CRCs are not checked)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[: len(WANDB_HEADER)] == WANDB_HEADER, f"{path} is not a wandb v0 log"
    pos, pending = len(WANDB_HEADER), b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """History rows, final summary and config of an offline run directory."""
    (log,) = run_dir.glob("run-*.wandb")
    history, summary, config = [], {}, {}
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
    return {"history": history, "summary": summary, "config": config}


def fit_config(root: Path, teacher: str, shards: dict[str, str]) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "accumulate_grad_batches": 4,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 1,
            "val_check_interval": 8,
            "check_val_every_n_epoch": None,
            "default_root_dir": str(root),
        },
        "model": {
            "teacher_path": teacher,
            "target_length": 256,
            "rope_method": "abf",
            "rope_kwargs": {"rope_theta": 40000.0},
            "distill_layers": [1, 2],
        },
        "data": {
            "long": {"urls": shards["long"], "seq_len": 256, "batch_size": 1},
            "short": {"urls": shards["short"], "seq_len": 16, "batch_size": 2},
            "s2l": {"urls": shards["s2l"], "seq_len": 64, "batch_size": 1},
            "val_short": {"urls": shards["val_short"], "seq_len": 64, "batch_size": 2},
            "schedule": ["long", "s2l", "long", "short"],
            "num_workers": 0,
            "shuffle_buffer": 4,
        },
    }
    path = root / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def wandb_logger_config(root: Path) -> Path:
    """The shipped logger config with its save_dir moved under ``root``."""
    config = yaml.safe_load((REPO / "configs" / "logger" / "wandb.yaml").read_text())
    init_args = config["trainer"]["logger"]["init_args"]
    assert init_args["project"] == "longred" and init_args["log_model"] is False
    init_args.update(save_dir=str(root / "wandb_logs"), name="tiny-offline")
    path = root / "wandb.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> dict[str, Any]:
    """One tiny offline fit (2 optimizer steps, one validation) and what its run dir holds."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    root = tmp_path_factory.mktemp("wandb_offline")
    teacher = save_tiny_llama(root / "teacher")
    shards = {
        "long": write_tiny_shards(root / "long", 256, 8, seed=1),
        "short": write_tiny_shards(root / "short", 16, 16, seed=2),
        "s2l": write_tiny_shards(root / "s2l", 64, 8, seed=3),
        "val_short": write_tiny_shards(root / "val_short", 64, 4, seed=4),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            (root / name.lower()).mkdir()
            mp.setenv(name, str(root / name.lower()))
        wandb.teardown()  # a W&B service left by an earlier test would keep its own settings
        try:
            cli = main(
                [
                    "fit",
                    "--config",
                    str(fit_config(root, teacher, shards)),
                    "--config",
                    str(wandb_logger_config(root)),
                ]
            )
            assert isinstance(cli.trainer.logger, WandbLogger)
        finally:
            wandb.finish()  # Lightning leaves the run open after fit
            wandb.teardown()  # stops the service: only then is the transaction log complete
    (run_dir,) = (root / "wandb_logs" / "wandb").glob("offline-run-*")
    return {"teacher": teacher, "run_dir": run_dir, **read_offline_run(run_dir)}


def test_offline_run_logs_every_stable_metric(offline_run):
    logged = {key for row in offline_run["history"] for key in row}
    assert set(METRICS) <= logged, sorted(set(METRICS) - logged)
    assert set(METRICS) <= set(offline_run["summary"])
    steps = [row["trainer/global_step"] for row in offline_run["history"] if "train/loss" in row]
    assert steps == [0, 1]  # one row per optimizer step
    assert offline_run["summary"]["val/ppl_short"] > 1.0


def test_offline_run_holds_the_model_config(offline_run):
    config = offline_run["config"]
    assert config["teacher_path"] == offline_run["teacher"]
    assert config["target_length"] == 256 and config["rope_kwargs"] == {"rope_theta": 40000.0}
    assert config["distill_layers"] == [1, 2] and config["s2l_weight"] == 10.0


def _cli_config(value: Any) -> dict[str, Any] | None:
    """The first mapping with trainer/model/data keys in a W&B config value (YAML or dict)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            return None
    if isinstance(value, dict):
        if {"trainer", "model", "data"} <= set(value):
            return value
        for inner in value.values():
            if (found := _cli_config(inner)) is not None:
                return found
    return None


def test_offline_run_holds_the_full_cli_config(offline_run):
    found = _cli_config(offline_run["config"])
    assert found is not None
    assert found["trainer"]["max_steps"] == 2 and found["trainer"]["accumulate_grad_batches"] == 4
    assert found["data"]["schedule"] == ["long", "s2l", "long", "short"]

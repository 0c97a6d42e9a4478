"""A user's own DataLoader (README "Your own DataLoader"): the batch contract, checked at the
batch in one line; the run-level checks of the data module run from the batches; the model
card says where the data came from and how many tokens were trained."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from longred_pl.callbacks import StreamMetrics
from longred_pl.errors import UserError
from longred_pl.export import export_checkpoint
from longred_pl.module import LongReDModule

README = Path(__file__).resolve().parents[2] / "README.md"
VOCAB, WINDOW = 128, 64  # the tiny_llama fixture's


def readme_example() -> str:
    """The python block of the README section "Your own DataLoader"."""
    text = README.read_text()
    section = text.split("\n## Your own DataLoader\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def fit(tiny_llama, tmp_path, batches, method="longred", accumulate=1, max_steps=1, **trainer):
    """``trainer.fit`` over ``batches`` (a list, cycled) from a plain DataLoader."""

    class Cycle(torch.utils.data.IterableDataset):
        def __iter__(self):
            n = 0
            while True:
                yield batches[n % len(batches)]
                n += 1

    model = LongReDModule(tiny_llama, method=method, target_length=256)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **trainer,
    )
    trainer.fit(model, DataLoader(Cycle(), batch_size=None))
    return model, trainer


def test_the_readme_example_runs_and_its_card_says_where_the_data_came_from(
    tiny_llama, tmp_path, monkeypatch, caplog
):
    code = readme_example()
    assert code.count('TEACHER = "/models/my-teacher"') == 1
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with caplog.at_level(logging.INFO):
            exec(compile(code.replace("/models/my-teacher", tiny_llama), "README", "exec"), {})
    said = [str(w.message) for w in caught if "Your own DataLoader" in str(w.message)]
    assert said == []  # a whole period per optimizer step: nothing to warn about
    assert "training data from a user DataLoader, not MixedLengthDataModule" in caplog.text
    card = (tmp_path / "student" / "README.md").read_text()
    # 2 steps x (8 long x 1 x 256 + 6 short x 4 x 16 + 2 s2l x 2 x 64)
    assert "- 2 optimizer steps, 32 micro-steps, 1 rank(s)." in card
    assert "- Tokens trained: 5,376 (long 4,096, short 768, s2l 512)." in card
    assert "From a user DataLoader (not `MixedLengthDataModule`)" in card
    assert "| long | 16 | 16 | 256 | 4,096 |" in card
    assert "| s2l | 4 | 8 | 64 | 512 |" in card
    assert "Unknown" not in card and "unknown" not in card.split("## Training", 1)[1][:200]


def test_a_hugging_face_batch_is_refused_in_one_line_naming_the_key(tiny_llama, tmp_path):
    x = ids(2, 64)
    batch = {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}
    with pytest.raises(UserError) as err:
        fit(tiny_llama, tmp_path, [batch], method="long_cpt")
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        "batch['kind'] missing (the batch has ['attention_mask', 'input_ids', 'labels']): "
        "LongReDModule reads one stream per micro-batch; add 'kind': 'long' to each batch "
        "(README 'Your own DataLoader')"
    )


def _padded():
    x = ids(2, 64)
    mask = torch.ones_like(x)
    mask[0, 40:] = 0
    return {"kind": "long", "input_ids": x, "attention_mask": mask}


@pytest.mark.parametrize(
    "method, batch, match",
    [
        ("longred", {"kind": ["long", "long"], "input_ids": ids(2, 64)}, r"is a list of 2 values"),
        ("longred", {"kind": "medium", "input_ids": ids(2, 64)}, r"'medium' is not a stream"),
        (
            "long_cpt",
            {"kind": "short", "input_ids": ids(2, 16)},
            r"model.method='long_cpt' trains on \['long'\] only.*\(longred, mix_cpt\)",
        ),
        ("longred", {"kind": "long", "input_ids": ids(2, 64).int()}, r"dtype torch.int32.*long"),
        ("longred", {"kind": "long", "input_ids": ids(1, 64)[0]}, r"shape \[64\].*unsqueeze"),
        ("longred", {"kind": "long", "input_ids": ids(1, 512)}, r"512 tokens, above model.target"),
        (
            "longred",
            {"kind": "short", "input_ids": ids(2, 128)},
            r"above the teacher's window \(64\)",
        ),
        ("longred", {"kind": "s2l", "input_ids": ids(2, 64)}, r"s2l batch needs batch\['index'\]"),
        (
            "longred",
            {"kind": "s2l", "input_ids": ids(2, 64), "index": torch.tensor([3, 4])},
            r"batch\['index'\] of an s2l batch is a tensor of shape \[2\]",
        ),
        (
            "longred",
            {"kind": "s2l", "input_ids": ids(2, 64), "position_ids": torch.arange(64)},
            r"position_ids'\] of an s2l batch has shape \[64\]",
        ),
        (
            "longred",
            {
                "kind": "s2l",
                "input_ids": ids(2, 64),
                "position_ids": (torch.arange(64) * 8 + 8).expand(2, 64),
            },
            r"position_ids'\] of an s2l batch span \[8, 512\].*\[0, model.target_length=256\)",
        ),
        ("longred", {"kind": "s2l", "input_ids": ids(2, 16), "index": 0}, r"s2l batches of 16"),
        ("long_cpt", _padded(), r"attention_mask'\] of a 'long' batch has zeros"),
        (
            "long_cpt",
            {"kind": "long", "input_ids": ids(2, 64), "labels": torch.full((2, 64), -100)},
            r"labels'\] of a 'long' batch differ from input_ids",
        ),
        ("long_cpt", {"kind": "long", "input_ids": ids(2, 64) + VOCAB}, r"outside the model's voc"),
    ],
)
def test_a_batch_that_breaks_the_contract_is_refused_at_the_batch(
    tiny_llama, tmp_path, method, batch, match
):
    with pytest.raises(UserError, match=match) as err:
        fit(tiny_llama, tmp_path, [batch], method=method)
    assert "\n" not in str(err.value)
    assert str(err.value).endswith("(README 'Your own DataLoader')") or "s2l batches of" in str(
        err.value
    )


def test_validation_batches_are_short_or_long(tiny_llama, tmp_path):
    train = {"kind": "long", "input_ids": ids(1, 64)}
    model = LongReDModule(tiny_llama, method="long_cpt", target_length=256)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    val = [{"kind": "s2l", "input_ids": ids(1, 64)}]
    with pytest.raises(UserError, match=r"validation batch\['kind'\]='s2l': validation batches"):
        trainer.fit(model, DataLoader([train], batch_size=None), DataLoader(val, batch_size=None))


def test_accumulation_that_misses_a_stream_is_warned(tiny_llama, tmp_path):
    period = ["long", "s2l", "long", "s2l"] + ["long", "short"] * 6  # the published 16
    batches = [
        {"kind": k, "input_ids": ids(1, 256) if k == "long" else ids(2, {"short": 16}.get(k, 64))}
        for k in period
    ]
    for n, b in enumerate(batches):
        b["index"] = n
    with pytest.warns(UserWarning) as caught:
        fit(tiny_llama, tmp_path, batches, accumulate=4, max_steps=2)
    said = [str(w.message) for w in caught if "Your own DataLoader" in str(w.message)]
    assert said == [
        "the first optimizer step (trainer.accumulate_grad_batches=4) read the streams "
        "{'long': 2, 's2l': 2}, none of ['short'] that model.method='longred' also trains on: "
        "make each optimizer step read every stream (trainer.accumulate_grad_batches = one "
        "whole period of your DataLoader's kinds; 16 in the published schedule) "
        "(README 'Your own DataLoader')",
        "optimizer step 2 read the streams {'long': 2, 'short': 2} but the first one "
        "{'long': 2, 's2l': 2}: steps train on different mixes (the loss weights assume one "
        "mix); set trainer.accumulate_grad_batches to a whole period of your DataLoader's "
        "kinds (README 'Your own DataLoader')",
    ]


def test_unread_keys_and_repeated_indices_are_warned_once(tiny_llama, tmp_path):
    batches = [
        {"kind": "long", "input_ids": ids(1, 64), "token_type_ids": 0, "position_ids": ids(1, 64)},
        {"kind": "s2l", "input_ids": ids(2, 64), "index": 0},
        {"kind": "short", "input_ids": ids(2, 16)},
    ]
    with pytest.warns(UserWarning) as caught:
        fit(tiny_llama, tmp_path, batches, accumulate=3, max_steps=2)
    said = [str(w.message) for w in caught if "Your own DataLoader" in str(w.message)]
    assert len(said) == 3, said
    assert said[0].startswith("batch keys ['token_type_ids'] are not read by LongReDModule")
    assert said[1].startswith("batch['position_ids'] of 'long' train batches are not read")
    assert said[2].startswith("s2l batches repeat batch['index']=0")


def test_the_stream_bar_callback_leaves_a_batch_without_kind_to_the_module():
    class Module:
        device = torch.device("cpu")
        step_stats = None  # would raise if touched

    StreamMetrics().on_train_batch_start(None, Module(), {"input_ids": ids(1, 4)}, 0)
    StreamMetrics().on_train_batch_start(None, Module(), [ids(1, 4)], 0)


def test_the_checkpoint_keeps_the_batches_read_and_export_writes_them_in_the_card(
    tiny_llama, tmp_path, capsys
):
    batches = [
        {"kind": "long", "input_ids": ids(1, 256, seed=1)},
        {"kind": "short", "input_ids": ids(4, 16, seed=2)},
        {"kind": "s2l", "input_ids": ids(2, 64, seed=3), "index": 2},
        {"kind": "long", "input_ids": ids(1, 128, seed=4)},
    ]
    for n, b in enumerate(batches):
        b["index"] = n
    model, trainer = fit(tiny_llama, tmp_path, batches, accumulate=4, max_steps=2)
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    record = torch.load(ckpt, weights_only=True)["longred_batches"]
    assert record["source"] == "a user DataLoader" and record["library"] is False
    assert record["streams"]["long"] == {
        "micro_batches": 4,
        "samples": 4,
        "tokens": 2 * (256 + 128),
        "min_len": 128,
        "max_len": 256,
    }
    # a resumed module keeps counting from the checkpoint's counts
    resumed = LongReDModule(tiny_llama, target_length=256)
    resumed.on_load_checkpoint(torch.load(ckpt, weights_only=True))
    assert resumed.batch_contract.record()["streams"] == record["streams"]

    out = export_checkpoint(str(ckpt), str(tmp_path / "export"))
    card = (out / "README.md").read_text()
    assert "From a user DataLoader (not `MixedLengthDataModule`)" in card
    assert "| long | 4 | 4 | 128-256 | 768 |" in card
    assert "- 2 optimizer steps, 8 micro-steps, 1 rank(s); checkpoint" in card
    assert "- Tokens trained: 1,152 (long 768, short 128, s2l 256)." in card
    assert "data from a user DataLoader (not MixedLengthDataModule)" in capsys.readouterr().out


def test_with_the_data_module_setup_says_nothing_and_the_record_says_so(
    tiny_llama, tiny_shards, tmp_path, caplog
):
    from longred_pl.data.datamodule import MixedLengthDataModule
    from longred_pl.data.shards import StreamConfig

    data = MixedLengthDataModule(
        long=StreamConfig(tiny_shards["long"], 256, 1),
        short=StreamConfig(tiny_shards["short"], 16, 2),
        s2l=StreamConfig(tiny_shards["s2l"], 64, 2),
        schedule=["long", "s2l", "long", "short"],
        num_workers=0,
    )
    model = LongReDModule(tiny_llama, target_length=256)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        accumulate_grad_batches=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with caplog.at_level(logging.INFO):
        trainer.fit(model, datamodule=data)
    assert "training data from" not in caplog.text
    record = model.batch_contract.record()
    assert record["source"] == "MixedLengthDataModule" and record["library"] is True
    assert {k: s["micro_batches"] for k, s in record["streams"].items()} == {
        "long": 2,
        "short": 1,
        "s2l": 1,
    }


def test_a_data_module_run_without_stream_settings_takes_its_tokens_from_the_record(tiny_llama):
    from longred_pl.eval.model_card import card_facts, render_card

    seen = {
        "source": "MixedLengthDataModule",
        "library": True,
        "streams": {
            "long": {
                "micro_batches": 8,
                "samples": 8,
                "tokens": 2048,
                "min_len": 256,
                "max_len": 256,
            },
        },
        "world_size": 2,
        "data_parallel": 2,
    }
    run = {"steps": 1, "micro_steps": 8, "world_size": 2, "schedule": ["long"], "seen": seen}
    facts = card_facts(LongReDModule(tiny_llama, method="long_cpt", target_length=256), run)
    assert facts["tokens"] == {"long": 4096, "total": 4096}  # this rank's count x 2 ranks
    card = render_card({**facts, "name": "x", "tokenizer": None, "evaluation": []})
    assert "- Tokens trained: 4,096 (long 4,096)." in card
    assert "Unknown: the checkpoint holds no stream settings" in card  # shards: not known

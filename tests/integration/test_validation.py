"""Bad input fails early with an error that names the field and the fix."""

import itertools
import json

import pytest
from torch.utils.data import DataLoader

from longred_pl.data.datamodule import MixedLengthDataModule, MixedLengthStream
from longred_pl.data.shards import StreamConfig
from longred_pl.module import LongReDModule


def dm(shards, **over):
    cfg = {
        "long": StreamConfig(shards["long"], 256, 1),
        "short": StreamConfig(shards["short"], 16, 2),
        "s2l": StreamConfig(shards["s2l"], 64, 1),
    }
    cfg.update(over)
    return MixedLengthDataModule(**cfg)


def test_s2l_longer_than_teacher_window(tiny_shards):
    with pytest.raises(
        ValueError, match=r"data.s2l.seq_len=64 is above the teacher's window \(32\)"
    ):
        dm(tiny_shards).check_model(
            teacher_window=32, target_length=256, vocab_size=128, method="longred"
        )


def test_short_longer_than_teacher_window(tiny_shards):
    with pytest.raises(ValueError, match=r"data.short.seq_len=16 is above the teacher's window"):
        dm(tiny_shards, s2l=None, schedule=["long", "short"]).check_model(8, 256, 128, "longred")


def test_long_longer_than_target(tiny_shards):
    with pytest.raises(
        ValueError, match=r"data.long.seq_len=256 is above model.target_length \(128\)"
    ):
        dm(tiny_shards).check_model(64, 128, 128, "longred")


def test_shards_from_a_bigger_vocabulary(tiny_shards):
    with pytest.raises(
        ValueError, match=r"data.long: shards were tokenised with a vocabulary of 128"
    ):
        dm(tiny_shards).check_model(64, 256, 100, "longred")


def test_token_ids_above_vocab_in_a_batch(tiny_shards, tmp_path):
    streams = {"short": StreamConfig(tiny_shards["short"], 16, 2)}
    ds = MixedLengthStream(streams, ["short"], 0, 1, 1, 0, 1, vocab_size=10)
    with pytest.raises(
        ValueError, match=r"data.short: token id \d+ is >= the model's vocabulary size 10"
    ):
        list(itertools.islice(iter(DataLoader(ds, batch_size=None)), 1))


def test_unknown_rope_method_and_scheme(tiny_llama):
    with pytest.raises(ValueError, match="model.rope_method"):
        LongReDModule(teacher_path=tiny_llama, target_length=256, rope_method="xpos")
    with pytest.raises(ValueError, match="model.s2l_positions"):
        LongReDModule(teacher_path=tiny_llama, target_length=256, s2l_positions="random")


def test_target_not_above_teacher_window(tiny_llama):
    with pytest.raises(ValueError, match="model.target_length"):
        LongReDModule(teacher_path=tiny_llama, target_length=64)


def test_model_without_rope(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="RoPE"):
        LongReDModule(teacher_path=str(tmp_path), target_length=4096)


def test_shard_urls_checked_at_construction(tiny_shards, tmp_path):
    with pytest.raises(ValueError, match="data.long.urls"):
        dm(tiny_shards, long=StreamConfig(str(tmp_path / "nothing-{0..3}.tar"), 256, 1))


def test_index_json_is_what_prepare_wrote(tiny_shards):
    index = json.load(open(f"{tiny_shards['long']}/index.json"))
    assert index["vocab_size"] == 128 and index["seq_len"] == 256


def test_remote_code_never_runs_unless_asked(tmp_path):
    """A model directory that ships its own modelling code is refused, and the code never runs."""
    marker = tmp_path / "ran.txt"
    (tmp_path / "configuration_evil.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
    )
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}
        )
    )
    with pytest.raises(ValueError, match="trust_remote_code"):
        LongReDModule(teacher_path=str(tmp_path), target_length=4096)
    assert not marker.exists()


def test_stream_limits_follow_the_registry_not_the_method_name(tiny_shards):
    """A registered objective with a teacher reads short text at the teacher's window."""
    from longred_pl.methods import METHODS, Method, register_method

    register_method(
        "my_distill",
        Method(
            {"long": ("L_long", 1.0), "short": ("L_short", 2.0)},
            needs_teacher=True,
            description="test",
        ),
    )
    try:
        with pytest.raises(
            ValueError, match=r"data.short.seq_len=16 is above the teacher's window"
        ):
            dm(tiny_shards, s2l=None, schedule=["long", "short"]).check_model(
                8, 256, 128, "my_distill"
            )
        dm(tiny_shards, s2l=None, schedule=["long", "short"]).check_model(8, 256, 128, "mix_cpt")
    finally:
        METHODS.pop("my_distill")

"""Reconciling model settings on resume (no silent mix of checkpoint and run)."""

import pytest

from longred_pl.errors import UserError
from longred_pl.resume import reconcile, same

DEFAULTS = {
    "short_weight": 5.0,
    "s2l_weight": 10.0,
    "distill_layers": None,
    "loss_chunk_size": 1024,
}
SAVED = {"short_weight": 5.0, "s2l_weight": 10.0, "distill_layers": [1, 2], "loss_chunk_size": 1024}


def test_equal_settings_say_nothing():
    use, notes = reconcile(SAVED, dict(SAVED), DEFAULTS, "c.ckpt")
    assert use == SAVED and notes == []


def test_explicit_recipe_change_is_refused_and_names_every_field():
    given = {**SAVED, "short_weight": 50.0, "distill_layers": [1, 3]}
    with pytest.raises(
        UserError,
        match=r"model.short_weight=50.0 \(checkpoint: 5.0\).*model.distill_layers=\[1, 3\]",
    ):
        reconcile(SAVED, given, DEFAULTS, "c.ckpt")


def test_setting_left_at_default_takes_the_checkpoint_value_with_a_note():
    given = {**SAVED, "distill_layers": None}
    use, notes = reconcile(SAVED, given, DEFAULTS, "c.ckpt")
    assert use["distill_layers"] == [1, 2]
    assert notes == ["model.distill_layers: [1, 2] from the checkpoint (this run left the default)"]


def test_runtime_setting_change_is_honoured_with_a_note():
    use, notes = reconcile(SAVED, {**SAVED, "loss_chunk_size": 256}, DEFAULTS, "c.ckpt")
    assert use["loss_chunk_size"] == 256 and "this run" in notes[0]


def test_same_compares_numbers_and_containers():
    assert same({"rope_theta": 40000}, {"rope_theta": 40000.0})
    assert not same([1, 2], [1, 2, 4]) and not same(5.0, 50.0) and not same(True, 1.5)


class _Mesh:
    """A stand-in for a 2-D DeviceMesh."""

    mesh_dim_names = ("data_parallel", "tensor_parallel")

    def __init__(self, dp, tp):
        self.sizes = {"data_parallel": dp, "tensor_parallel": tp}

    def __getitem__(self, name):
        size = self.sizes[name]
        return type("Sub", (), {"size": lambda self: size})()


def test_mesh_with_tensor_parallel_ranks_is_refused():
    """ModelParallelStrategy's defaults put one node's devices on tensor_parallel."""
    from longred_pl.checks import check_mesh

    check_mesh(None)
    check_mesh(_Mesh(2, 1))
    with pytest.raises(
        UserError, match=r"data_parallel=1 x tensor_parallel=2.*data_parallel_size: 2"
    ):
        check_mesh(_Mesh(1, 2))

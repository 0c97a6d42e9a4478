"""LongReDModule on a tiny random Llama saved with save_pretrained."""

import pytest
import torch

from longred_pl.models import capture_hidden_states
from longred_pl.module import LongReDModule


def make_module(path, **kwargs):
    kwargs.setdefault("target_length", 256)
    kwargs.setdefault("rope_method", "abf")
    kwargs.setdefault("rope_kwargs", {"rope_theta": 40000.0})
    module = LongReDModule(teacher_path=path, **kwargs)
    module.configure_model()
    return module


def test_captured_states_equal_output_hidden_states(tiny_llama):
    module = make_module(tiny_llama)
    model = module.teacher
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True).hidden_states
        with capture_hidden_states(model, [0, 1, 2]) as got:
            model.base_model(input_ids=ids)
    assert len(ref) == 3
    for i in (0, 1, 2):
        torch.testing.assert_close(got[i], ref[i])


def test_skipped_positions_attend_across_gaps(tiny_llama):
    """The last token must see the first one even when the ids jump (no packed-mask split)."""
    module = make_module(tiny_llama)
    ids = torch.randint(0, 128, (1, 12))
    pos = torch.tensor([[0, 1, 2, 50, 51, 52, 53, 54, 120, 121, 200, 201]])
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 128
    with torch.no_grad():
        a = module.hidden_states(module.student, ids, [2], pos)[2][0, -1]
        b = module.hidden_states(module.student, changed, [2], pos)[2][0, -1]
    assert not torch.allclose(a, b)


def test_student_has_extended_rope_teacher_unchanged(tiny_llama):
    module = make_module(tiny_llama)
    assert module.student.config.max_position_embeddings == 256
    assert module.student.config.rope_parameters["rope_theta"] == 40000.0
    assert module.teacher.config.max_position_embeddings == 64
    assert module.teacher.config.rope_parameters["rope_theta"] == 10000.0


def _batches():
    g = torch.Generator().manual_seed(0)
    return [
        {"kind": "long", "input_ids": torch.randint(0, 128, (2, 256), generator=g), "index": 0},
        {"kind": "s2l", "input_ids": torch.randint(0, 128, (2, 64), generator=g), "index": 1},
        {"kind": "short", "input_ids": torch.randint(0, 128, (4, 16), generator=g), "index": 2},
    ]


def test_steps_train_student_only_and_loss_goes_down(tiny_llama):
    module = make_module(tiny_llama, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in module.student.state_dict().items()}
    opt = module.configure_optimizers()
    opt_params = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not opt_params & {id(p) for p in module.teacher.parameters()}
    assert all(not p.requires_grad for p in module.teacher.parameters())
    module.train()
    assert not module.teacher.training
    first, last = {}, {}
    for step in range(8):
        for batch in _batches():
            loss, term = module.compute_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            (first if step == 0 else last)[batch["kind"]] = term.item()
    for kind in ("long", "short", "s2l"):
        assert last[kind] < first[kind], kind
    for k, v in module.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert any(
        not torch.equal(v, student_before[k]) for k, v in module.student.state_dict().items()
    )


def test_teacher_not_in_state_dict_and_reloads(tiny_llama):
    module = make_module(tiny_llama)
    sd = module.state_dict()
    assert sd and not any(k.startswith("teacher.") for k in sd)
    assert any(k.startswith("student.") for k in sd)
    fresh = make_module(tiny_llama)
    fresh.load_state_dict(sd, strict=True)


def test_s2l_position_ids_deterministic_per_step(tiny_llama):
    module = make_module(tiny_llama)
    batch = {"kind": "s2l", "input_ids": torch.zeros(3, 64, dtype=torch.long), "index": 7}
    a = module.s2l_position_ids(batch)
    b = module.s2l_position_ids(dict(batch))
    c = module.s2l_position_ids({**batch, "index": 8})
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 64) and int(a.max()) < 256 and (a[:, 0] == 0).all()


def test_baselines(tiny_llama):
    mix = make_module(tiny_llama, method="mix_cpt")
    assert mix.teacher is None
    for batch in _batches():
        loss, term = mix.compute_loss(batch)
        assert loss.item() > 0 and loss is term
    long_only = make_module(tiny_llama, method="long_cpt")
    with pytest.raises(ValueError, match="long stream only"):
        long_only.compute_loss(_batches()[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"distill_layers": [0, 3]}, "distill_layers"),
        ({"short_weight": -1.0}, "short_weight"),
        ({"s2l_weight": -0.5}, "s2l_weight"),
        ({"method": "distill"}, "model.method"),
    ],
)
def test_bad_arguments(tiny_llama, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LongReDModule(teacher_path=tiny_llama, target_length=256, **kwargs)


def test_missing_teacher_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.teacher_path"):
        LongReDModule(teacher_path=str(tmp_path / "nope"), target_length=256)


def test_frozen_forward_reshards_fsdp_root(tiny_llama):
    """A forward without grad asks an FSDP2 root to free its gathered weights."""
    module = make_module(tiny_llama)
    calls = []
    module.teacher.reshard = lambda: calls.append("reshard")
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        module.hidden_states(module.teacher, ids, [2])
    assert calls == ["reshard"]
    module.student.reshard = lambda: calls.append("student")
    module.hidden_states(module.student, ids, [2])  # with grad: backward will reshard
    assert calls == ["reshard"]

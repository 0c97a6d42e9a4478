"""LongReDModule on a tiny random Llama saved with save_pretrained."""

import pytest
import torch

from longred_pl.errors import UserError
from longred_pl.forward import capture_hidden_states, run_model
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
    model = module.teacher.model
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
        a = run_model(module.student, ids, [2], pos)[0][2][0, -1]
        b = run_model(module.student, changed, [2], pos)[0][2][0, -1]
    assert not torch.allclose(a, b)


def test_student_has_extended_rope_teacher_unchanged(tiny_llama):
    module = make_module(tiny_llama)
    assert module.student.config.max_position_embeddings == 256
    assert module.student.config.rope_parameters["rope_theta"] == 40000.0
    assert module.teacher.model.config.max_position_embeddings == 64
    assert module.teacher.model.config.rope_parameters["rope_theta"] == 10000.0


def _batches():
    g = torch.Generator().manual_seed(0)
    return [
        {"kind": "long", "input_ids": torch.randint(0, 128, (2, 256), generator=g), "index": 0},
        {"kind": "s2l", "input_ids": torch.randint(0, 128, (2, 64), generator=g), "index": 1},
        {"kind": "short", "input_ids": torch.randint(0, 128, (4, 16), generator=g), "index": 2},
    ]


def test_steps_train_student_only_and_loss_goes_down(tiny_llama):
    module = make_module(tiny_llama, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    teacher_before = {k: v.clone() for k, v in module.teacher.model.state_dict().items()}
    # the comparison below must compare something: every teacher tensor is in its state dict
    assert len(teacher_before) == len(list(module.teacher.model.state_dict(keep_vars=True)))
    assert len(teacher_before) >= len(list(module.teacher.model.parameters())) > 0
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
    after = module.teacher.model.state_dict()
    assert after.keys() == teacher_before.keys()
    for k, v in after.items():
        assert torch.equal(v, teacher_before[k]), k
    assert any(
        not torch.equal(v, student_before[k]) for k, v in module.student.state_dict().items()
    )


def test_teacher_not_in_state_dict_and_reloads(tiny_llama):
    module = make_module(tiny_llama)
    sd = module.state_dict()
    assert sd and not any(k.startswith("teacher.") for k in sd)
    # the teacher's own state dict is complete: only the module's checkpoint leaves it out
    own = module.teacher.model.state_dict()
    assert own and set(own) == {k for k, _ in module.teacher.model.named_parameters()} | {
        k for k, _ in module.teacher.model.named_buffers() if k in own
    }
    assert len(module.teacher.state_dict()) == len(own)
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
        assert loss.item() > 0 and torch.equal(loss, term)
    long_only = make_module(tiny_llama, method="long_cpt")
    with pytest.raises(ValueError, match=r"trains on the streams|consumes the streams"):
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
    with pytest.raises(UserError, match="model.teacher_path"):
        LongReDModule(teacher_path=str(tmp_path / "nope"), target_length=256)


def test_frozen_forward_reshards_fsdp_root(tiny_llama):
    """A forward without grad asks an FSDP2 root to free its gathered weights."""
    module = make_module(tiny_llama)
    calls = []
    module.teacher.model.reshard = lambda: calls.append("reshard")
    ids = torch.randint(0, 128, (1, 8))
    module.teacher.hidden_states(ids, [2])
    assert calls == ["reshard"]
    module.student.reshard = lambda: calls.append("student")
    module.L_short({"kind": "short", "input_ids": ids})  # student with grad: backward reshards
    assert calls == ["reshard", "reshard"]


def test_s2l_batch_without_index_is_refused(tiny_llama):
    """Without the micro-step number every s2l micro-step would get the same skipped ids."""
    module = make_module(tiny_llama)
    with pytest.raises(UserError, match=r"batch\['index'\]"):
        module.s2l_position_ids({"kind": "s2l", "input_ids": torch.zeros(2, 64, dtype=torch.long)})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"position_kwargs": {"r_meen": 5}},
            r"model.position_kwargs: unknown key\(s\) \['r_meen'\].*r_mean",
        ),
        ({"s2l_positions": "none", "position_kwargs": {"r_mean": 5}}, "takes no kwargs"),
        ({"loss_chunk_size": -1}, "model.loss_chunk_size"),
        ({"max_skipped_steps": 0}, "model.max_skipped_steps"),
    ],
)
def test_bad_settings_refused_at_construction(tiny_llama, kwargs, match):
    with pytest.raises(UserError, match=match):
        LongReDModule(teacher_path=tiny_llama, target_length=256, **kwargs)


@pytest.mark.parametrize(
    "precision, explicit, expected",
    [
        ("bf16-mixed", None, "bfloat16"),
        ("32-true", None, "float32"),
        ("bf16-mixed", "float32", "float32"),
    ],
)
def test_teacher_dtype_follows_the_students_compute_dtype(
    tiny_llama, precision, explicit, expected
):
    from types import SimpleNamespace

    module = LongReDModule(
        teacher_path=tiny_llama,
        target_length=256,
        rope_kwargs={"rope_theta": 40000.0},
        teacher_dtype=explicit,
    )
    module._trainer = SimpleNamespace(precision=precision)
    assert module.teacher_dtype() == expected
    module._trainer = None
    module.configure_model()
    assert next(module.teacher.parameters()).dtype == getattr(torch, explicit or "float32")

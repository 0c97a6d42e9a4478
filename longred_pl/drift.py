"""Per-layer distribution drift of a student vs its teacher, and layer selection.

docs/method.md ("The problem", Dong et al. 2025, Sec. 2): once the RoPE is changed, hidden
states and attention distributions on *short* inputs move away from the original
model's, and the drift grows with depth. Two measures, per layer, on short text:

* hidden-state cosine ``mean_tokens cos(h_student[i], h_teacher[i])`` for every
  hidden-state index ``i`` in ``0..n_layers`` (0 = embedding output, ``n_layers`` = final
  normalised output; the indices of ``model.distill_layers``);
* attention KL ``mean_{heads, queries} KL(teacher || student)`` for every decoder layer
  ``l`` in ``1..n_layers`` (layer ``l`` produces hidden state ``l``).

:func:`measure_drift` computes both, :func:`recommend_layers` turns them into
``distill_layers`` and :func:`plot_drift` draws them; ``longred select-layers``
(:func:`select_layers`) runs the three on the untrained RoPE-extended student. The attention maps need eager
attention (sdpa and flash kernels never materialise them), so the models are switched to
``eager`` for the measurement and switched back afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longred_pl import _transformers_private
from longred_pl.arguments import ModelLoading, Output
from longred_pl.data.shards import expand_urls
from longred_pl.errors import UserError
from longred_pl.eval.metrics import AttentionKL, HiddenStateCosine
from longred_pl.models import freeze, load_causal_lm, load_config, resolve_device
from longred_pl.outputs import check_output
from longred_pl.plotting import pyplot

__all__ = [
    "DriftReport",
    "eager_attention",
    "measure_drift",
    "plot_drift",
    "pyplot",
    "recommend_layers",
    "select_layers",
]


@dataclass(frozen=True)
class DriftReport:
    """Drift of a student against its teacher, measured on short text.

    Attributes:
        cosine: mean hidden-state cosine per hidden-state index ``0..n_layers``.
        attention_kl: mean attention ``KL(teacher || student)`` per decoder layer; entry
            ``l - 1`` is layer ``l`` (``1..n_layers``).
        num_tokens: tokens the means run over.
        seq_len: length of the short samples.
    """

    cosine: list[float]
    attention_kl: list[float]
    num_tokens: int
    seq_len: int

    @property
    def n_layers(self) -> int:
        return len(self.cosine) - 1

    @property
    def drift(self) -> list[float]:
        """``1 - cosine`` per hidden-state index (0 means no drift)."""
        return [1.0 - c for c in self.cosine]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_layers": self.n_layers, "drift": self.drift}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReport:
        return cls(
            cosine=[float(c) for c in data["cosine"]],
            attention_kl=[float(k) for k in data["attention_kl"]],
            num_tokens=int(data["num_tokens"]),
            seq_len=int(data["seq_len"]),
        )

    def to_markdown(self) -> str:
        """One row per hidden-state index: cosine, drift and the attention KL of its layer."""
        lines = [
            f"Drift on {self.num_tokens} tokens of {self.seq_len}-token text "
            "(index 0 = embeddings, "
            f"{self.n_layers} = final normed output).",
            "",
            "| index | cosine | 1 - cosine | attention KL |",
            "|---:|---:|---:|---:|",
        ]
        for i, cos in enumerate(self.cosine):
            kl = f"{self.attention_kl[i - 1]:.3e}" if i > 0 else "-"
            lines.append(f"| {i} | {cos:.6f} | {1.0 - cos:.3e} | {kl} |")
        return "\n".join(lines) + "\n"


@contextlib.contextmanager
def eager_attention(*models: nn.Module) -> Iterator[None]:
    """Run ``models`` with eager attention inside the block, restoring their backends after.

    Uses ``PreTrainedModel.set_attn_implementation`` (transformers 5); a model without it
    must already be eager.
    """
    previous = []
    for model in models:
        current = _transformers_private.attn_implementation(model.config)
        previous.append(current)
        if current == "eager":
            continue
        switch: Any = getattr(model, "set_attn_implementation", None)
        if switch is None:
            raise TypeError(
                f"{type(model).__name__} uses {current!r} attention and cannot be switched; "
                "load it with attn_implementation='eager' to measure attention drift"
            )
        switch("eager")
    try:
        yield
    finally:
        for model, current in zip(models, previous, strict=True):
            if current not in (None, "eager"):
                model.set_attn_implementation(current)  # type: ignore[operator]


@contextlib.contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def measure_drift(
    teacher: nn.Module,
    student: nn.Module,
    batches: Iterable[torch.Tensor | dict[str, torch.Tensor]],
    progress: bool = False,
) -> DriftReport:
    """Per-layer hidden-state cosine and attention KL of ``student`` vs ``teacher``.

    Both models read the same short samples at contiguous positions ``0..T-1`` (so the
    teacher stays inside its window). Memory: the ``n_layers`` attention maps
    ``[B, H, T, T]`` of both models are alive at once; keep ``B * T`` small (the paper
    uses 1K-token text). Measure in float32: bf16 attention maps add rounding noise to
    the KL.

    Args:
        teacher: the original model (Hugging Face causal LM).
        student: the same architecture with another RoPE (or other weights).
        batches: token ids ``[B, T]`` (or dicts with ``input_ids``) of short text.
        progress: show a tqdm bar.

    Returns:
        A :class:`DriftReport`.
    """
    from tqdm.auto import tqdm

    teacher_config: Any = teacher.config
    student_config: Any = student.config
    n_layers = int(teacher_config.num_hidden_layers)
    if int(student_config.num_hidden_layers) != n_layers:
        raise ValueError(
            f"teacher has {n_layers} layers but the student has "
            f"{student_config.num_hidden_layers}; drift needs the same architecture"
        )
    cosine, kl = HiddenStateCosine(n_layers + 1), AttentionKL(n_layers)
    seq_len = 0
    with eager_attention(teacher, student), _eval_mode(teacher, student):
        for batch in tqdm(batches, desc="drift", unit="batch", disable=not progress):
            input_ids_BT = batch["input_ids"] if isinstance(batch, dict) else batch
            seq_len = int(input_ids_BT.shape[1])
            t_out = _forward(teacher, input_ids_BT)
            s_out = _forward(student, input_ids_BT)
            cosine.update(s_out.hidden_states, _on(t_out.hidden_states, s_out.hidden_states))
            kl.update(s_out.attentions, _on(t_out.attentions, s_out.attentions))
            del t_out, s_out
    if int(cosine.count) == 0:
        raise ValueError("measure_drift got no batch; pass at least one [B, T] tensor")
    return DriftReport(
        cosine=cosine.compute().tolist(),
        attention_kl=kl.compute().tolist(),
        num_tokens=int(cosine.count),
        seq_len=seq_len,
    )


def _forward(model: nn.Module, input_ids_BT: torch.Tensor) -> Any:
    out = model(
        input_ids=input_ids_BT.to(_device(model)),
        output_hidden_states=True,
        output_attentions=True,
        use_cache=False,
        logits_to_keep=1,
    )
    if not out.attentions or out.attentions[0] is None:
        raise RuntimeError(
            f"{type(model).__name__} returned no attention maps; it must run with eager attention"
        )
    return out


def _on(states: tuple[torch.Tensor, ...], like: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """``states`` moved to the devices of ``like`` (teacher and student may sit apart)."""
    return [s.to(o.device) for s, o in zip(states, like, strict=True)]


def recommend_layers(report: DriftReport, k: int) -> list[int]:
    """``k`` hidden-state indices where drift jumps, plus the final index ``n_layers``.

    Rule: with ``drift[i] = 1 - cosine[i]``, the jump of decoder layer ``i`` is
    ``drift[i] - drift[i - 1]`` (how much drift that layer adds). Among the intermediate
    indices ``1..n_layers-1``, take the ``k`` with the largest jumps (ties go to the
    shallower index), add ``n_layers`` (the final normed output, always distilled in the
    paper and the only state ``L_s2l`` uses), and return them sorted. Distilling the
    output of the layer that introduced a jump pulls back the drift where it arises,
    before deeper layers amplify it. Index 0 is never chosen: the embedding output does
    not depend on positions, so its drift is 0 for any RoPE change.

    Relation to the paper: for Llama-3-8B (32 layers) the published run distils
    ``{1, 9, 12, 14, 15, 32}``, the layers after which the paper's per-layer drift curves
    jump (layer 1, the first layer to see the new RoPE, and a cluster in the middle);
    that is ``k = 5`` under this rule. The rule describes how those indices were read off
    the curves; it has not been run on Llama-3-8B here, and the paper measured a trained
    long model whereas ``longred select-layers`` by default measures the untrained
    RoPE-extended student, so the indices it prints for Llama-3-8B may differ.

    Args:
        report: a :class:`DriftReport`.
        k: number of intermediate layers (``>= 0``); capped at ``n_layers - 1``.

    Returns:
        Sorted hidden-state indices in ``[1, n_layers]``, always ending with ``n_layers``.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    drift, n = report.drift, report.n_layers
    jumps = {i: drift[i] - drift[i - 1] for i in range(1, n)}
    ranked = sorted(jumps, key=lambda i: (-jumps[i], i))
    return sorted({*ranked[:k], n})


def plot_drift(report: DriftReport, path: str, title: str | None = None) -> str:
    """Write a two-panel PNG: hidden-state cosine and attention KL by layer. Returns ``path``."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax_cos, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_cos.plot(range(report.n_layers + 1), report.cosine, marker="o")
    ax_cos.set(
        xlabel="hidden-state index (0 = embeddings)",
        ylabel="mean cosine",
        title="hidden-state cosine (student vs teacher)",
    )
    ax_kl.plot(range(1, report.n_layers + 1), report.attention_kl, marker="o", color="C3")
    ax_kl.set(xlabel="decoder layer", ylabel="mean KL(teacher || student)", title="attention KL")
    for ax in (ax_cos, ax_kl):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ------------------------------------------------------------ longred select-layers
def _student_config(
    teacher_config: Any,
    student: str | None,
    rope_method: str,
    target_length: int | None,
    rope_kwargs: dict[str, Any] | None,
    trust_remote_code: bool,
) -> tuple[Any, str]:
    """The measured student's config and a description of it; errors name the flags."""
    from longred_pl.rope import extend_rope

    if student is not None:
        return load_config(student, trust_remote_code, field="--student"), student
    if target_length is None:
        raise UserError("--target-length is required unless --student is given")
    try:
        config = extend_rope(teacher_config, rope_method, target_length, **(rope_kwargs or {}))
    except ValueError as err:
        message = str(err).replace("model.rope_kwargs", "--rope-kwargs")
        message = message.replace("model.rope_method", "--rope-method")
        raise UserError(message.replace("model.target_length", "--target-length")) from err
    return config, f"{rope_method} {target_length} {json.dumps(rope_kwargs or {})}"


def select_layers(
    teacher: str,
    data: str,
    seq_len: int,
    output: Output,
    student: str | None = None,
    rope_method: str = "abf",
    target_length: int | None = None,
    rope_kwargs: dict[str, Any] | None = None,
    num_samples: int = 16,
    k: int = 4,
    batch_size: int = 4,
    loading: ModelLoading = ModelLoading(),
) -> dict[str, Any]:
    """Per-layer drift of the RoPE-extended student on short text; recommends distill_layers.

    Writes drift.json, drift.md, drift.png and distill_layers.yaml (a snippet for
    ``model.distill_layers``) to ``out``.

    Args:
        teacher: local directory of the original model.
        data: short-text shards (``longred prepare``).
        seq_len: tokens per sample (at most the teacher's window).
        output: the output directory (:class:`longred_pl.arguments.Output`).
        student: measure this model (e.g. a trained long model) instead of the untrained
            RoPE-extended teacher.
        rope_method: the student's RoPE method (``rope.ROPE_METHODS``).
        target_length: the student's window (``model.target_length``).
        rope_kwargs: the RoPE method's parameters, e.g. ``{"rope_theta": 2e7}``.
        num_samples: samples measured.
        k: intermediate layers to recommend (plus the final one).
        batch_size: samples per forward.
        loading: device, dtype, trust_remote_code (:class:`longred_pl.arguments.ModelLoading`).
    """
    from longred_pl.eval.evaluator import read_batches

    if k < 0 or num_samples < 1 or batch_size < 1:
        raise UserError("--k must be >= 0, --num-samples and --batch-size >= 1")
    trust_remote_code = loading.trust_remote_code
    teacher_config = load_config(teacher, trust_remote_code, field="--teacher")
    student_config, described = _student_config(
        teacher_config, student, rope_method, target_length, rope_kwargs, trust_remote_code
    )
    _check_selection(teacher_config, student_config, student, data, seq_len)
    check_output(
        output.out, output.overwrite, "--out", {"--teacher": teacher, "--student": student}
    )
    run_device = resolve_device(loading.device)
    models = [
        freeze(load_causal_lm(path, cfg, "eager", loading.dtype, trust_remote_code)).to(run_device)
        for path, cfg in ((teacher, teacher_config), (student or teacher, student_config))
    ]
    vocab = int(teacher_config.vocab_size)
    batches = read_batches(data, seq_len, num_samples, batch_size, vocab, "--data")
    report = measure_drift(*models, batches, progress=output.progress)
    layers = recommend_layers(report, k)
    return _write_selection(report, layers, output.out, k, teacher, described)


def _check_selection(
    teacher_config: Any, student_config: Any, student: str | None, data: str, seq_len: int
) -> None:
    """The sample length fits the teacher and the shards exist; says when no drift can show."""
    if student is None and student_config.rope_parameters == teacher_config.rope_parameters:
        print(
            "note: the student's RoPE equals the teacher's (e.g. abf kept rope_theta), so no "
            "drift will show; set --rope-kwargs to change it"
        )
    window = int(teacher_config.max_position_embeddings)
    if not 2 <= seq_len <= window:
        raise UserError(f"--seq-len must be in [2, {window}] (the teacher's window), got {seq_len}")
    expand_urls(data, field="--data")


def _write_selection(
    report: DriftReport, layers: list[int], out: str, k: int, teacher: str, described: str
) -> dict[str, Any]:
    from longred_pl.outputs import replace_output

    replace_output(Path(out))
    Path(out, "drift.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    Path(out, "drift.md").write_text(report.to_markdown())
    plot = plot_drift(report, os.path.join(out, "drift.png"), title=f"student: {described}")
    snippet = (
        f"# longred select-layers: the k={k} layers with the largest drift jumps, plus the\n"
        f"# final index (longred_pl.drift.recommend_layers); teacher {teacher}, student {described}\n"
        f"model:\n  distill_layers: {json.dumps(layers)}\n"
    )
    Path(out, "distill_layers.yaml").write_text(snippet)
    print(report.to_markdown())
    print(f"recommended distill_layers: {layers}\n\n{snippet}")
    return {"report": report.to_dict(), "distill_layers": layers, "plot": plot, "yaml": snippet}

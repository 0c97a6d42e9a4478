"""Held-out learning curves of the paper-setting teacher at several sizes: how big, how long.

The issue's condition: a teacher big enough that more in-domain text no longer improves it
much within the study's budget. Each size is built with
``configs/paper_setting/teacher-paper-setting.yaml`` (its size and ``--steps`` replaced) and
its held-out loss on A and B recorded every ``--every`` steps
(``longred_pl.demo.teacher.learning_curve``). The figure that decides is the gain over the last
stretch of the curve holding as many A tokens as one Long+CPT run of the study reads
(``--student-tokens``): ``exp(loss_before - loss_end)``, 1.0 = flat (under the cosine
schedule this also counts the learning-rate decay); and, directly, the gain of the built
teacher trained on that many more A tokens at the students' learning rate
(``continued_gain``).

Outputs in ``--out``: ``teacher_curve.json`` (every point, build times), ``teacher_curve.md``
and ``teacher_curve.png``. Builds are cached under ``--work`` (same recipe: reused).

    python -m experiments.paper_setting.teacher_curve --sizes small medium --steps 3000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT, machine_info, quiet

RESULTS = Path(__file__).resolve().parent / "results"
SIZES: dict[str, dict[str, int]] = {
    "small": {"hidden_size": 128, "num_layers": 4, "intermediate_size": 384},  # 1.0M
    "medium": {"hidden_size": 192, "num_layers": 6, "intermediate_size": 576},  # 3.1M
}
DOMAINS = ("shakespeare", "python")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.paper_setting.teacher_curve",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--sizes", nargs="+", default=["small", "medium"], choices=sorted(SIZES))
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[3000],
        help="training steps per size (one value for all, or one per size)",
    )
    p.add_argument("--every", type=int, default=250, help="curve interval (steps)")
    p.add_argument(
        "--student-tokens",
        type=int,
        default=1_728_512,
        help="A tokens of one Long+CPT run (experiments/reproduce: 211 x 8 x 1024)",
    )
    p.add_argument("--student-lr", type=float, default=3e-4, help="the students' lr")
    p.add_argument(
        "--recipe", default=str(ROOT / "configs/paper_setting/teacher-paper-setting.yaml")
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=str(ROOT / "artifacts/paper/curve"))
    p.add_argument("--out", default=str(RESULTS))
    return p.parse_args(argv)


def loss_at(curve: list[dict], step: float, key: str) -> float:
    """The curve's loss at ``step``, linear between recorded points (clamped at the ends)."""
    points = [(p["step"], p[key]) for p in curve]
    if step <= points[0][0]:
        return points[0][1]
    for (s0, l0), (s1, l1) in zip(points, points[1:], strict=False):
        if s0 <= step <= s1:
            return l0 + (l1 - l0) * (step - s0) / (s1 - s0)
    return points[-1][1]


def late_gain(metrics: dict, recipe: Any, student_tokens: int) -> dict[str, Any]:
    """Perplexity gained per domain over the last stretch holding ``student_tokens`` of A.

    The teacher reads its corpora shuffled together, so one step holds ``batch x window x
    share_A`` tokens of A; the stretch is ``student_tokens`` over that.
    """
    tokens = metrics["train_tokens_per_corpus"]
    share = tokens[DOMAINS[0]] / sum(tokens.values())
    stretch = student_tokens / (recipe.batch_size * recipe.window * share)
    curve, end = metrics["curve"], metrics["curve"][-1]["step"]
    gains = {}
    for d in DOMAINS:
        key = f"val/{d}/loss"
        gains[d] = math.exp(loss_at(curve, end - stretch, key) - curve[-1][key])
    return {"share_A": round(share, 4), "stretch_steps": round(stretch), "ppl_gain": gains}


def continued_gain(
    teacher_dir: Path, recipe: Any, student_tokens: int, lr: float, seed: int = 0
) -> dict[str, Any]:
    """The direct test: the built teacher trained on ``student_tokens`` more tokens of A.

    Train rows of A at the teacher's window and RoPE, shuffled, AdamW at the students' ``lr``
    (constant; betas 0.9/0.95, weight decay 0.1, clip 1.0, as configs/paper_setting); the
    held-out loss of A and B before and after. ``ppl_gain`` = exp(before - after): 1.0 = more
    in-domain text no longer improves the teacher.
    """
    from transformers import AutoModelForCausalLM

    from longred_pl.data.tokenizer import load_tokenizer
    from longred_pl.demo.teacher import _load, _pack, batches, evaluate, spread

    tokenizer = load_tokenizer(teacher_dir)
    train_rows = _pack(_load(recipe, "train"), tokenizer, recipe.window, progress=False)
    val_rows = _pack(_load(recipe, "val"), tokenizer, recipe.window, progress=False)
    val = {d: spread(rows, recipe.eval_rows) for d, rows in val_rows.items()}
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    before = {d: evaluate(model, rows, recipe.batch_size) for d, rows in val.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr, betas=(0.9, 0.95), weight_decay=0.1)
    steps = round(student_tokens / (recipe.batch_size * recipe.window))
    data = batches(train_rows[DOMAINS[0]], recipe.batch_size, torch.Generator().manual_seed(seed))
    model.train()
    for _ in range(steps):
        input_ids_BT = next(data)
        loss = model(input_ids=input_ids_BT, labels=input_ids_BT).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    after = {d: evaluate(model, rows, recipe.batch_size) for d, rows in val.items()}
    return {
        "steps": steps,
        "lr": lr,
        "tokens": steps * recipe.batch_size * recipe.window,
        "val_loss_before": before,
        "val_loss_after": after,
        "ppl_gain": {d: math.exp(before[d] - after[d]) for d in before},
    }


def markdown(results: dict) -> str:
    lines = [
        "Held-out loss of the teacher (A = Shakespeare, B = Python stdlib) against training "
        "steps, one build per size. Late gain: perplexity ratio over the last stretch of the "
        f"curve holding {results['student_tokens']} A tokens (one Long+CPT run); 1.0 = flat.",
        "",
        "Continued: the built teacher trained on that many more tokens of A alone (its window "
        "and RoPE, the students' AdamW lr, constant): held-out perplexity ratio before/after.",
        "",
        "| size | parameters | steps | s per step | val loss A | val loss B | late gain A | "
        "late gain B | continued gain A | continued gain B |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["sizes"].items():
        last, g, c = r["curve"][-1], r["late"]["ppl_gain"], r["continued"]["ppl_gain"]
        lines.append(
            f"| {name} | {r['num_parameters']} | {r['steps']} | {r['s_per_step']:.3f} | "
            f"{last['val/shakespeare/loss']:.4f} | {last['val/python/loss']:.4f} | "
            f"{g['shakespeare']:.4f} | {g['python']:.4f} | {c['shakespeare']:.4f} | "
            f"{c['python']:.4f} |"
        )
    for name, r in results["sizes"].items():
        lines += ["", f"{name}: step, val loss A, val loss B", ""]
        lines += [
            ", ".join(
                f"{p['step']}: {p['val/shakespeare/loss']:.3f} / {p['val/python/loss']:.3f}"
                for p in r["curve"]
            )
        ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    from longred_pl.drift import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, d, role in zip(axes, DOMAINS, "AB", strict=True):
        for name, r in results["sizes"].items():
            xs = [p["tokens"] / 1e6 for p in r["curve"]]
            ax.plot(
                xs,
                [p[f"val/{d}/loss"] for p in r["curve"]],
                marker="o",
                ms=3,
                label=f"{name} ({r['num_parameters'] / 1e6:.1f}M)",
            )
        ax.set(
            xlabel="training tokens (millions, both domains)",
            ylabel="held-out loss",
            title=f"teacher learning curve, {role} = {d}",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from longred_pl.demo.teacher import TeacherRecipe, build_teacher

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    base = TeacherRecipe.from_file(args.recipe)
    steps = args.steps * len(args.sizes) if len(args.steps) == 1 else args.steps
    if len(steps) != len(args.sizes):
        raise SystemExit("--steps takes one value, or one per --sizes entry")
    results: dict[str, Any] = {"benchmark": "teacher_curve", "student_tokens": args.student_tokens}
    results |= {"machine": machine_info(torch.device("cpu")), "sizes": {}}
    for name, n in zip(args.sizes, steps, strict=True):
        recipe = dataclasses.replace(base, steps=n, **SIZES[name])
        out = Path(args.work) / f"{name}{n}"
        build_teacher(out, recipe, progress=True, curve_every=args.every)
        metrics = json.loads((out / "metrics.json").read_text())
        if "curve" not in metrics:
            raise SystemExit(f"{out} was built without a curve; delete it and run again")
        results["sizes"][name] = {
            "recipe": recipe.to_dict(),
            "steps": n,
            "curve": metrics["curve"],
            "num_parameters": metrics["num_parameters"],
            "s_per_step": metrics["train_seconds"] / n,
            "build_seconds": metrics["build_seconds"],
            "late": late_gain(metrics, recipe, args.student_tokens),
            "continued": continued_gain(out, recipe, args.student_tokens, args.student_lr),
        }
        print(f"{name}: {json.dumps(results['sizes'][name]['continued'])}", flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "teacher_curve.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "teacher_curve.md").write_text(markdown(results))
    plot(results, out_dir / "teacher_curve.png")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()

"""The paper's claim in the paper's setting: the short and s2l text is not the teacher's own.

In the paper (docs/method.md) the continued-training chunks (SlimPajama) are not the original model's
pre-training data; that is why Mix+CPT loses short-text quality there while distillation on
the same chunks keeps it. Here the teacher learns two domains, A = Shakespeare's plays and
B = the Python standard library (``configs/paper_setting/teacher-paper-setting.yaml``,
3000 steps chosen from measured learning curves; its curve is recorded and reported, and
it is not flat); the long stream is
long documents of A, exactly as in :mod:`experiments.reproduce` (same RoPE change, same long
samples in the same order); the short and s2l streams are C = the World English Bible
(``longred_pl.demo.corpora``, corpus ``bible``), a domain the teacher never saw.

Runs, each for the same optimizer steps with seeds 0..N-1: Long+CPT, Mix+CPT, LongReD-C
(distilled layers from ``longred select-layers`` on this teacher and the C short text) and
LongReD-C with 3x the published weights (15/30 instead of 5/10). Then ``longred merge``
interpolates each LongReD-C and Mix+CPT student with the teacher at ``--alphas``; alpha = 0 is
the untrained extended student, alpha = 1 the student. Every model is evaluated with the
library's ``evaluate_model``: held-out short perplexity and retention per domain (A and B;
C for information) and held-out long perplexity by position (A and B).

``--budget`` (minutes, default 90) sets the steps from measured costs (teacher build and
shards if not cached, one evaluation, a few calibration steps per method, the merges).
Outputs in ``--out`` (default ``experiments/paper_setting/results``): ``paper_setting.json``
(every figure, settings, wall times, machine), ``paper_setting.md`` (mean +- std over seeds,
the alpha curve, the teacher's curve, the verdicts) and ``paper_setting.png``. An
interrupted study resumes: runs and merges already in the JSON are skipped.

    python -m experiments.paper_setting                 # about 90 minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import quiet
from experiments.paper_setting.report import (
    ALPHAS,
    CPT_DOMAIN,
    DOMAINS,
    LONG_DOMAINS,
    MERGED,
    METHODS,
    markdown,
    plot,
    scalars,
)
from experiments.reproduce import study as first_study
from experiments.reproduce.study import fit, hms, interleave, plan_steps, spread, tokens_per_step

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "paper_setting"
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "longred-c-3x": ("longred-c", {"short_weight": 15.0, "s2l_weight": 30.0}),
}
"""Runs that are another method's YAML with some ``model`` settings changed."""
BASE = {name: VARIANTS.get(name, (name, {}))[0] for name in METHODS}
MERGE_S = 3.0  # writing one merged model, planned generously (measured: 0.05-0.5 s at 1M)
START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{NAME} {hms(time.perf_counter() - START)}] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = first_study.study_parser(
        "python -m experiments.paper_setting",
        __doc__,
        budget=90.0,
        out=RESULTS,
        recipe="configs/paper_setting/teacher-paper-setting.yaml",
        configs="configs/paper_setting",
        work="artifacts/paper",
    )
    add = p.add_argument
    add("--curve-every", type=int, default=250, help="teacher learning-curve interval (steps)")
    add("--select-k", type=int, default=2, help="intermediate layers select-layers picks")
    add("--alphas", type=float, nargs="*", default=list(ALPHAS), help="merge weights")
    return p.parse_args(argv)


@dataclass
class Study(first_study.Study):
    """The first study's, with the weight variants of the methods and the distilled layers."""

    distill_layers: list[int] | None = None

    @classmethod
    def read_configs(cls, args: argparse.Namespace) -> tuple[dict[str, str], dict[str, dict]]:
        """The base configs' texts (fingerprinted); each method's config, its variant applied."""
        bases = sorted(set(BASE.values()))
        texts = {n: (Path(args.configs) / f"{n}.yaml").read_text() for n in bases}
        configs = {}
        for name, base in BASE.items():
            configs[name] = yaml.safe_load(texts[base])
            configs[name]["model"].update(VARIANTS.get(name, (base, {}))[1])
        return texts, configs

    def eval_sizes(self) -> list[int]:
        return [self.args.num_short, self.args.num_long, self.args.select_k]

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "variants": {n: v[1] for n, v in VARIANTS.items()}}


# ----------------------------------------------------------------------- teacher, data
def ensure_teacher(study: Study) -> dict[str, Any]:
    """Build (minutes) or reuse the teacher, with its held-out learning curve."""
    return first_study.ensure_teacher(study, study.args.curve_every, say=log)


def stream_plan(lengths: dict[str, int]) -> dict[str, tuple[tuple[str, ...], str, int, bool]]:
    """Each stream's ``(domains, split, seq_len, pack)``: long = A, short and s2l = C."""
    plan = {"long": ((DOMAINS[0],), "train", lengths["long"], False)}
    for kind in ("short", "s2l"):
        plan[kind] = ((CPT_DOMAIN,), "train", lengths[kind], True)
    for d in DOMAINS:
        plan[f"val_short_{d}"] = ((d,), "val", lengths["val_short"], True)
    for d in LONG_DOMAINS:
        plan[f"val_long_{d}"] = ((d,), "val", lengths["long"], False)
    return plan


def prepare_data(study: Study) -> dict[str, int]:
    """Write every stream's shards with the teacher's tokenizer; cached by their spec."""
    from longred_pl.data.prepare import cut_samples, tokenize_documents, write_shards
    from longred_pl.data.tokenizer import load_tokenizer
    from longred_pl.demo.corpora import load_corpus

    spec = {k: v for k, v in study.fingerprint().items() if k in ("recipe", "lengths", "python")}
    spec["eval"] = [study.args.num_short, study.args.num_long]
    manifest = study.data / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["spec"] == spec:
        return json.loads(manifest.read_text())["samples"]
    tokenizer, tokens, samples = load_tokenizer(study.teacher), {}, {}
    for name, (domains, split, seq_len, pack) in stream_plan(study.lengths).items():
        for d in domains:
            if (d, split) not in tokens:
                docs = load_corpus(d, split, study.recipe.corpus_max_bytes)
                tokens[d, split] = list(tokenize_documents(docs, tokenizer, progress=False))
        cuts = [list(cut_samples(tokens[d, split], seq_len, pack, len(tokenizer))) for d in domains]
        rows = cuts[0] if len(cuts) == 1 else interleave(*cuts)
        if name.startswith("val_"):
            rows = spread(rows, study.args.num_short if "short" in name else study.args.num_long)
        index = write_shards(
            rows,
            study.data / name,
            seq_len,
            samples_per_shard=256,
            pack=False,
            vocab_size=len(tokenizer),
            tokenizer_name=str(study.teacher),
            source={"stream": name, "spec": spec},
            overwrite=True,
        )
        samples[name] = index["num_samples"]
    manifest.write_text(json.dumps({"spec": spec, "samples": samples}, indent=2) + "\n")
    return samples


def choose_layers(study: Study, results: dict) -> list[int]:
    """``longred select-layers`` on this teacher and the short (C) text: the distilled layers."""
    from longred_pl.arguments import ModelLoading, Output
    from longred_pl.drift import select_layers

    if "select_layers" not in results:
        m = study.configs["longred-c"]["model"]
        start = time.perf_counter()
        picked = select_layers(
            str(study.teacher),
            str(study.data / "short"),
            study.lengths["short"],
            Output(str(study.work / "select-layers"), progress=False),
            rope_method=m["rope_method"],
            target_length=m["target_length"],
            rope_kwargs=m.get("rope_kwargs"),
            k=study.args.select_k,
            loading=ModelLoading(device="cpu"),
        )
        results["select_layers"] = {
            "distill_layers": picked["distill_layers"],
            "drift": picked["report"],
            "seconds": round(time.perf_counter() - start, 1),
            "command": f"longred select-layers --teacher {study.teacher} --data "
            f"{study.data / 'short'} --seq-len {study.lengths['short']} --rope-method "
            f"{m['rope_method']} --target-length {m['target_length']} --rope-kwargs "
            f"'{json.dumps(m.get('rope_kwargs'))}' --k {study.args.select_k} --out "
            f"{study.work / 'select-layers'}",
        }
    layers = results["select_layers"]["distill_layers"]
    log(f"select-layers: distill_layers {layers}")
    return layers


# ------------------------------------------------------------------------------ training
def run_config(study: Study, name: str, seed: int, steps: int, run_dir: Path) -> dict:
    """The first study's run config (seeds, steps, teacher, shards, outputs) plus the layers
    chosen by ``select-layers`` for the distilling methods."""
    cfg = first_study.run_config(study, name, seed, steps, run_dir)
    if "distill_layers" in cfg["model"]:
        assert study.distill_layers is not None, "choose_layers first"
        cfg["model"]["distill_layers"] = study.distill_layers
    return cfg


def calibrate(study: Study) -> dict[str, dict[str, float]]:
    """Steady step time and fixed cost of each base method (a variant costs as its base)."""
    return first_study.calibrate(study, BASE, run_config, say=log)


# ---------------------------------------------------------------------------- evaluation
def evaluate(study: Study, model_dir: Path, long: bool = True) -> dict[str, Any]:
    """``evaluate_model`` once per domain: short (all domains) and long (A and B)."""
    from longred_pl.arguments import ModelLoading
    from longred_pl.eval.evaluator import evaluate_model
    from longred_pl.eval.settings import EvalData, Probes

    assert study.samples is not None, "prepare_data first"
    start, n, data_dir = time.perf_counter(), study.samples, study.data
    out: dict[str, Any] = {"short": {}, "long": {}}
    for d in DOMAINS:
        with_long = long and d in LONG_DOMAINS
        data = EvalData(
            str(data_dir / f"val_short_{d}"),
            study.lengths["val_short"],
            str(data_dir / f"val_long_{d}") if with_long else None,
            study.lengths["long"] if with_long else None,
            num_short=n[f"val_short_{d}"],
            num_long=n.get(f"val_long_{d}", 1),
            batch_size=8,
            buckets=8,
            order="first",
        )
        probes = Probes(copy_span=2, copy_trials=1, copy_distances=[0], seed=0)  # not reported
        result = evaluate_model(
            str(model_dir), data, probes, ModelLoading(device="cpu"), progress=False
        )
        out["short"][d], out["long"][d] = result["short"], result["long"]
        out.update(window=result["window"], rope=result["rope"])
    return {**out, "seconds": round(time.perf_counter() - start, 2)}


def merge_and_evaluate(study: Study, student: Path, alpha: float) -> dict[str, Any]:
    """``longred merge STUDENT TEACHER OUT --alpha A``, evaluated, the merged model removed."""
    from longred_pl.merge import merge_models

    out, start = study.work / "merged", time.perf_counter()
    merge_models(str(student), str(study.teacher), str(out), alpha=alpha, overwrite=True)
    merge_s = round(time.perf_counter() - start, 2)
    record = {"alpha": alpha, "merge_s": merge_s, "eval": evaluate(study, out)}
    shutil.rmtree(out, ignore_errors=True)
    return record


def save(results: dict, out: Path) -> None:
    """Write the JSON atomically; the table and the plot once the steps are chosen."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json.tmp").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{NAME}.json.tmp").replace(out / f"{NAME}.json")
    if results["settings"].get("tokens_per_run") and results["runs"]:
        (out / f"{NAME}.md").write_text(markdown(results))
        plot(results, out / f"{NAME}.png")


# ---------------------------------------------------------------------------------- main
def load_results(study: Study) -> dict[str, Any]:
    """The results of an earlier invocation of the same study (resume), else a new record."""
    return first_study.load_results(study, NAME, empty=("runs", "merges"))


def references(study: Study, results: dict) -> None:
    """Evaluate the teacher and the untrained extended student, once per study."""
    first_study.references(study, results, evaluate_fn=evaluate, save_fn=save, say=log)


def merges_per_seed(study: Study) -> int:
    return len(MERGED) * len(study.args.alphas)


def choose_steps(study: Study, results: dict, invocation: dict) -> int:
    """``--steps``, else the steps of the runs already done, else the budget plan."""
    if results["settings"]["steps"] is None:
        start, eval_s = time.perf_counter(), results["untrained"]["eval"]["seconds"]
        costs = calibrate(study)
        invocation["calibration_s"] = round(time.perf_counter() - start, 1)
        elapsed, seeds = time.perf_counter() - START, study.args.seeds
        merge_s = seeds * merges_per_seed(study) * (eval_s + MERGE_S)
        steps = plan_steps(study.args.budget * 60, elapsed, costs, eval_s, seeds, 30 + merge_s)
        run_s = {n: c["overhead_s"] + steps * c["steady_step_s"] + eval_s for n, c in costs.items()}
        total = elapsed + seeds * sum(run_s.values()) + merge_s
        results["plan"] = {"costs": costs, "eval_s": eval_s, "run_s": run_s, "merge_s": merge_s}
        results["plan"]["total_s"] = total
        results["settings"]["steps"] = steps
        each = ", ".join(f"{METHODS[n]} {s:.0f} s" for n, s in run_s.items())
        log(
            f"plan: {steps} steps per run ({each}); merges {merge_s:.0f} s; "
            f"study about {total / 60:.0f} min"
        )
    steps = results["settings"]["steps"]
    tokens = {
        n: {k: v * steps for k, v in tokens_per_step(c).items()} for n, c in study.configs.items()
    }
    results["settings"]["tokens_per_run"] = tokens
    long_samples = results["settings"]["samples"]["long"]
    passes = tokens["longred-c"]["long"] / study.lengths["long"] / long_samples
    results["settings"]["long_stream_passes"] = round(passes, 3)  # > 1: long samples repeat
    log(
        f"{steps} optimizer steps per run ({passes:.2f} passes over the long samples); "
        f"training tokens per run: {json.dumps(tokens)}"
    )
    return steps


def run_all(study: Study, results: dict, steps: int) -> None:
    """Train, evaluate and merge every (method, seed) not yet in ``results``, seed by seed."""
    todo = [(n, s) for s in range(study.args.seeds) for n in METHODS]
    for i, (name, seed) in enumerate(todo):
        key, run_dir = f"{name}/seed{seed}", study.work / "runs" / name / f"seed{seed}"
        if key not in results["runs"]:
            log(f"run {i + 1}/{len(todo)}: {METHODS[name]} seed {seed}, {steps} steps")
            record: dict[str, Any] = {"method": name, "seed": seed, "steps": steps}
            record["fit"] = fit(run_config(study, name, seed, steps, run_dir), run_dir)
            record["eval"] = evaluate(study, run_dir / "student")
            results["runs"][key] = record
            results["settings"]["seeds_done"] = sorted(
                {r["seed"] for r in results["runs"].values()}
            )
            save(results, Path(study.args.out))
            row = scalars(results["runs"][key]["eval"], results["teacher"]["eval"])
            kept = ", ".join(f"{d} {row[f'retention/{d}']:.3f}" for d in DOMAINS)
            wall = record["fit"]["wall_s"] + record["eval"]["seconds"]
            log(f"  {wall:.0f} s; short-text retention {kept}")
        if name in MERGED:
            for alpha in study.args.alphas:
                if f"{key}/alpha{alpha}" not in results["merges"]:
                    merged = merge_and_evaluate(study, run_dir / "student", alpha)
                    results["merges"][f"{key}/alpha{alpha}"] = {"method": name, "seed": seed}
                    results["merges"][f"{key}/alpha{alpha}"].update(merged)
                    save(results, Path(study.args.out))
            log(f"  merged with the teacher at alpha {study.args.alphas}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global START
    START = time.perf_counter()  # the budget counts from here
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    study = Study.load(args)
    results = load_results(study)
    invocation = first_study.start_invocation(results, args, argv, study.lengths)
    results["teacher_build"] = ensure_teacher(study)
    invocation["teacher_s"] = results["teacher_build"]["seconds"]
    start = time.perf_counter()
    study.samples = results["settings"]["samples"] = prepare_data(study)
    invocation["data_s"] = round(time.perf_counter() - start, 1)
    log(f"shards in {study.data}: {study.samples}")
    study.distill_layers = choose_layers(study, results)
    references(study, results)
    steps = choose_steps(study, results, invocation)
    run_all(study, results, steps)
    invocation["total_s"] = round(time.perf_counter() - START, 1)
    complete = len(results["runs"]) >= len(METHODS) * args.seeds
    results["complete"] = complete and len(results["merges"]) >= merges_per_seed(study) * args.seeds
    save(results, Path(args.out))
    print(markdown(results))
    log(f"wrote {args.out}/{NAME}.json, {NAME}.md, {NAME}.png")
    return results

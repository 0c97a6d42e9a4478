"""Reproduce the paper's effect on the embedded default: Long+CPT, Mix+CPT, LongReD-C, LongReD-U.

Both causes of short-text loss that the paper names (docs/method.md) are present: distribution drift (the
student's RoPE is ABF for 1024 tokens, the teacher's window is 256) and forgetting (the
teacher knows two domains, Shakespeare and the Python stdlib, while the long stream is
Shakespeare only; short and s2l streams alternate both domains). Each method trains from
``configs/reproduce/<method>.yaml`` for the same optimizer steps with the same seeds
(``seed_everything``, ``model.seed``, ``data.seed``); the library's ``evaluate_model`` then
measures every student, the teacher and the untrained extended student (the drift alone):
held-out short perplexity per domain, retention ``exp(loss_teacher - loss_model)``, long
perplexity by position bucket, repeat-copy accuracy by distance.

``--budget`` (minutes for the whole study) sets the steps from measured costs: teacher
build, shards, one evaluation, and a few calibration steps per method; the plan is printed
before training. Outputs in ``--out``: ``reproduce.json`` (every raw figure, settings, wall
times, machine), ``reproduce.md`` (mean +- std over seeds), ``reproduce.png`` (default
``experiments/reproduce/results``). An interrupted study resumes: runs already in the JSON
are skipped. The tables and the plot are :mod:`experiments.reproduce.report`.

    python -m experiments.reproduce                   # about 60 minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import hashlib
import json
import math
import shutil
import statistics
import sys
import time
from argparse import ArgumentParser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from benchmarks.common import ROOT, machine_info, quiet
from experiments.reproduce.report import DOMAINS, METHODS, markdown, plot, scalars

RESULTS = Path(__file__).resolve().parent / "results"
COST_OF = {name: name for name in METHODS} | {"longred-u": "longred-c"}  # same step cost
START = time.perf_counter()


def log(message: str) -> None:
    print(f"[reproduce {hms(time.perf_counter() - START)}] {message}", flush=True)


def hms(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def study_parser(
    prog: str, doc: str, *, budget: float, recipe: str, configs: str, work: str, out: Path
) -> ArgumentParser:
    """The flags every study takes, with the study's defaults (``recipe``, ``configs`` and
    ``work`` relative to the repository); each study adds its own."""
    p = ArgumentParser(prog=prog, description=doc.splitlines()[0])
    add = p.add_argument
    add("--budget", type=float, default=budget, help="minutes for the whole study")
    add("--seeds", type=int, default=3, help="seeds 0..N-1 of every method")
    add("--steps", type=int, default=None, help="optimizer steps per run (skips the plan)")
    add("--threads", type=int, default=2, help="torch intra-op threads")
    add("--recipe", default=str(ROOT / recipe))
    add("--configs", default=str(ROOT / configs), help="the method YAMLs")
    add("--work", default=str(ROOT / work), help="teacher, shards, runs")
    add("--out", default=str(out), help="JSON, markdown, plot")
    add("--num-short", type=int, default=128, help="held-out short samples per domain")
    add("--num-long", type=int, default=24, help="held-out long samples per domain")
    add("--calib-steps", type=int, default=4, help="optimizer steps per calibration fit")
    add("--fresh", action="store_true", help="discard the results of an earlier invocation")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = study_parser(
        "python -m experiments.reproduce",
        __doc__,
        budget=60.0,
        out=RESULTS,
        recipe="configs/reproduce/teacher-two-domains.yaml",
        configs="configs/reproduce",
        work="artifacts/reproduce",
    )
    p.add_argument("--copy-trials", type=int, default=16, help="repeat-copy sequences per distance")
    return p.parse_args(argv)


@dataclass
class Study:
    """What every stage shares: arguments, teacher recipe, method configs, paths."""

    args: argparse.Namespace
    recipe: Any
    texts: dict[str, str]
    configs: dict[str, dict]
    lengths: dict[str, int]
    work: Path
    samples: dict[str, int] | None = None

    @classmethod
    def read_configs(cls, args: argparse.Namespace) -> tuple[dict[str, str], dict[str, dict]]:
        """The method configs' texts (fingerprinted) and each method's parsed config."""
        texts = {n: (Path(args.configs) / f"{n}.yaml").read_text() for n in METHODS}
        return texts, {n: yaml.safe_load(text) for n, text in texts.items()}

    @classmethod
    def load(cls, args: argparse.Namespace) -> Study:
        from longred_pl.demo.teacher import TeacherRecipe

        recipe = TeacherRecipe.from_file(args.recipe)
        texts, configs = cls.read_configs(args)
        data = configs["longred-c"]["data"]
        lengths = {k: data[k]["seq_len"] for k in ("long", "short", "s2l")}
        lengths["val_short"] = recipe.window
        return cls(args, recipe, texts, configs, lengths, Path(args.work))

    @property
    def teacher(self) -> Path:
        return self.work / "teacher"

    @property
    def data(self) -> Path:
        return self.work / "data"

    def eval_sizes(self) -> list[int]:
        """The evaluation's sizes (part of the fingerprint)."""
        return [self.args.num_short, self.args.num_long, self.args.copy_trials]

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed study must share with the runs already done."""
        return {
            "recipe": self.recipe.to_dict(),
            "lengths": self.lengths,
            "configs": {
                n: hashlib.sha256(t.encode()).hexdigest()[:16] for n, t in self.texts.items()
            },
            "eval": self.eval_sizes(),
            "python": sys.version.split()[0],  # the stdlib corpus is the interpreter's
        }


# ------------------------------------------------------------------------ teacher, data
def ensure_teacher(study: Any, curve_every: int = 0, say: Callable = log) -> dict[str, Any]:
    """Build (minutes) or reuse the teacher; its own metrics and the wall time.

    ``curve_every`` > 0 records its held-out learning curve every that many steps; a cached
    teacher whose curve was taken at another interval is kept, and the log says so (``say``:
    the study's own log).
    """
    from longred_pl.demo.teacher import ensure_teacher as build

    saved = study.teacher / "recipe.json"
    cached = (study.teacher / "metrics.json").is_file() and saved.is_file()
    cached = cached and json.loads(saved.read_text()) == study.recipe.to_dict()
    say("teacher: cached" if cached else "teacher: building (minutes; cached afterwards)")
    start = time.perf_counter()
    build(study.teacher, study.recipe, progress=not cached, curve_every=curve_every)
    metrics = json.loads((study.teacher / "metrics.json").read_text())
    curve = metrics.get("curve") or [{"step": None}]
    if cached and curve_every and curve[0]["step"] != min(curve_every, study.recipe.steps):
        say(
            f"teacher: --curve-every {curve_every} not applied: the cached teacher's curve "
            f"starts at step {curve[0]['step']}; delete {study.teacher} to rebuild it"
        )
    return {"built_now": not cached, "seconds": round(time.perf_counter() - start, 1), **metrics}


def interleave(a: list, b: list) -> list:
    """a0 b0 a1 b1 ...: as many samples of each domain, the longer one's surplus dropped."""
    return [sample for pair in zip(a, b, strict=False) for sample in pair]


def spread(samples: list, count: int) -> list:
    """At most ``count`` evenly spaced samples, so a held-out set covers every document."""
    if len(samples) <= count:
        return samples
    return [samples[i * len(samples) // count] for i in range(count)]


def prepare_data(study: Study) -> dict[str, int]:
    """Write every stream's shards, tokenising each corpus and split once; cached by spec."""
    from longred_pl.data.prepare import cut_samples, tokenize_documents, write_shards
    from longred_pl.data.tokenizer import load_tokenizer
    from longred_pl.demo.corpora import load_corpus

    spec = {k: v for k, v in study.fingerprint().items() if k != "configs"}
    manifest = study.data / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["spec"] == spec:
        return json.loads(manifest.read_text())["samples"]
    tokenizer, n, args = load_tokenizer(study.teacher), study.lengths, study.args
    tokens = {}
    for corpus in DOMAINS:
        for split in ("train", "val"):
            docs = load_corpus(corpus, split, study.recipe.corpus_max_bytes)
            tokens[corpus, split] = list(tokenize_documents(docs, tokenizer, progress=False))

    def cut(corpus: str, split: str, seq_len: int, pack: bool) -> list:
        return list(cut_samples(tokens[corpus, split], seq_len, pack, len(tokenizer)))

    streams = {"long": cut("shakespeare", "train", n["long"], False)}
    for kind in ("short", "s2l"):
        streams[kind] = interleave(*(cut(d, "train", n[kind], True) for d in DOMAINS))
    for d in DOMAINS:
        streams[f"val_short_{d}"] = spread(cut(d, "val", n["val_short"], True), args.num_short)
        streams[f"val_long_{d}"] = spread(cut(d, "val", n["long"], False), args.num_long)
    samples = {}
    for name, rows in streams.items():
        source = {"stream": name, "spec": spec}
        index = write_shards(
            rows,
            study.data / name,
            len(rows[0]),
            samples_per_shard=256,
            pack=False,
            vocab_size=len(tokenizer),
            tokenizer_name=str(study.teacher),
            source=source,
            overwrite=True,
        )
        samples[name] = index["num_samples"]
    manifest.write_text(json.dumps({"spec": spec, "samples": samples}, indent=2) + "\n")
    return samples


# ------------------------------------------------------------------------------- training
class StepClock(L.Callback):
    """Wall time of every optimizer step (data, forwards, backwards, optimizer)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks = [time.perf_counter()]

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= len(self.marks):  # an optimizer step has just finished
            self.marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def run_config(study: Study, name: str, seed: int, steps: int, run_dir: Path) -> dict:
    """A method's YAML with this run's seeds, steps, teacher, shards and output directory."""
    cfg = copy.deepcopy(study.configs[name])
    cfg["seed_everything"] = cfg["model"]["seed"] = cfg["data"]["seed"] = seed
    cfg["model"]["teacher_path"] = str(study.teacher)
    for kind in ("long", "short", "s2l"):
        if cfg["data"].get(kind):
            cfg["data"][kind]["urls"] = str(study.data / kind)
    trainer = cfg["trainer"]
    trainer.update(max_steps=steps, default_root_dir=str(run_dir), enable_progress_bar=False)
    trainer.update(enable_model_summary=False)
    trainer["logger"]["init_args"]["save_dir"] = str(run_dir)
    export = {"dirpath": str(run_dir / "student")}
    trainer["callbacks"] = [{"class_path": "longred_pl.export.ExportStudent", "init_args": export}]
    return cfg


def tokens_per_step(cfg: dict) -> dict[str, int]:
    """Training tokens of one optimizer step, per stream, from the schedule and batch sizes."""
    from longred_pl.data.schedule import build_schedule, kind_at

    schedule = build_schedule(cfg["data"].get("schedule"), cfg["data"].get("ratios"))
    counts = {"long": 0, "short": 0, "s2l": 0}
    for micro_step in range(cfg["trainer"]["accumulate_grad_batches"]):
        kind = kind_at(schedule, micro_step)
        counts[kind] += cfg["data"][kind]["seq_len"] * cfg["data"][kind]["batch_size"]
    return counts


def fit(cfg: dict, run_dir: Path) -> dict[str, Any]:
    """``longred fit --config <cfg>`` in-process, in a fresh ``run_dir``, timing every step."""
    from longred_pl.trainer_cli import build_cli

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    path = run_dir / "run_config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    start, clock = time.perf_counter(), StepClock()
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both carry arguments
    try:
        cli = build_cli(["--config", str(path)])  # what `longred fit --config path` builds
    finally:
        sys.argv = argv
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    wall, steps = time.perf_counter() - start, clock.durations()
    steady = statistics.mean(steps[1:] or steps)  # the first step also fills the data buffers
    return {
        "config": str(path),
        "wall_s": round(wall, 2),
        "step_s": [round(s, 3) for s in steps],
        "steady_step_s": round(steady, 3),
        "overhead_s": round(max(0.0, wall - steady * len(steps)), 2),  # start-up, export
        "final_train_losses": last_losses(run_dir),
    }


def last_losses(run_dir: Path, last: int = 10) -> dict[str, float | None]:
    """Mean of each logged ``train/loss*`` metric over the last ``last`` optimizer steps."""
    files = sorted(run_dir.glob("logs/*/metrics.csv"))
    rows = list(csv.DictReader(files[-1].open())) if files else []
    out = {}
    for key in [k for k in (rows[0] if rows else {}) if k.startswith("train/loss")]:
        values = [float(r[key]) for r in rows if r[key]]
        out[key] = round(statistics.mean(values[-last:]), 4) if values else None
    return out


def calibrate(
    study: Any,
    cost_of: dict[str, str] = COST_OF,
    run_config_fn: Callable = run_config,
    say: Callable = log,
) -> dict[str, dict[str, float]]:
    """Steady step time and fixed cost (start-up, first step, export) of each method.

    Each method costs as the method ``cost_of`` names (one calibration fit each); the paper
    study passes its variants' bases, its own run configs and its log.
    """
    costs, work = {}, study.work / "calibration"
    for name in sorted(set(cost_of.values())):
        costs[name] = fit(run_config_fn(study, name, 0, study.args.calib_steps, work), work)
        step, fixed = costs[name]["steady_step_s"], costs[name]["overhead_s"]
        say(f"calibration {name}: {step:.2f} s per step, {fixed:.1f} s start-up and export")
    shutil.rmtree(work, ignore_errors=True)
    keys = ("steady_step_s", "overhead_s")
    return {m: {k: costs[c][k] for k in keys} for m, c in cost_of.items()}


def plan_steps(
    budget_s: float,
    elapsed_s: float,
    costs: dict[str, dict],
    eval_s: float,
    seeds: int,
    reserve_s: float = 30.0,
    margin: float = 0.9,
) -> int:
    """Most optimizer steps such that ``seeds`` runs of every method (fit + eval) fit the budget.

    ``costs[method]`` holds ``steady_step_s`` and ``overhead_s``; ``reserve_s`` is kept for
    the report, and ``1 - margin`` of the rest for noise.
    """
    available = (budget_s - elapsed_s - reserve_s) * margin
    fixed = seeds * sum(c["overhead_s"] + eval_s for c in costs.values())
    per_step = seeds * sum(c["steady_step_s"] for c in costs.values())
    steps = math.floor((available - fixed) / per_step) if per_step > 0 else 0
    if steps < 1:
        need = (elapsed_s + reserve_s + (fixed + per_step) / margin) / 60
        raise SystemExit(
            f"--budget {budget_s / 60:.1f} min leaves no room for one step per run (about "
            f"{need:.1f} min needed); raise --budget or pass --steps"
        )
    return steps


# ----------------------------------------------------------------------------- evaluation
def evaluate(study: Study, model_dir: Path, long: bool = True) -> dict[str, Any]:
    """``evaluate_model`` once per domain; the copy probe (text-free) from the first call only."""
    from longred_pl.arguments import ModelLoading
    from longred_pl.eval.evaluator import evaluate_model
    from longred_pl.eval.settings import EvalData, Probes

    assert study.samples is not None, "prepare_data first"
    start, n, data_dir = time.perf_counter(), study.samples, study.data
    out: dict[str, Any] = {"short": {}, "long": {}}
    probes = Probes(copy_span=16, copy_trials=study.args.copy_trials, seed=0)
    for d in DOMAINS:
        data = EvalData(
            str(data_dir / f"val_short_{d}"),
            study.lengths["val_short"],
            str(data_dir / f"val_long_{d}") if long else None,
            study.lengths["long"] if long else None,
            num_short=n[f"val_short_{d}"],
            num_long=n[f"val_long_{d}"],
            batch_size=8,
            buckets=8,
            order="first",
        )
        result = evaluate_model(
            str(model_dir), data, probes, ModelLoading(device="cpu"), progress=False
        )
        out["short"][d], out["long"][d] = result["short"], result["long"]
        if "copy" not in out:
            out.update(window=result["window"], rope=result["rope"], copy=result["copy"])
            probes = Probes(copy_span=2, copy_trials=1, copy_distances=[0])  # done
    return {**out, "seconds": round(time.perf_counter() - start, 2)}


def save_untrained_student(study: Study, out: Path) -> Path:
    """The teacher's weights with the students' RoPE, before any training: the drift alone."""
    from longred_pl.export import copy_tokenizer
    from longred_pl.models import load_causal_lm, load_config
    from longred_pl.rope import extend_rope

    m = study.configs["longred-c"]["model"]
    config = load_config(str(study.teacher))
    config = extend_rope(config, m["rope_method"], m["target_length"], **m.get("rope_kwargs", {}))
    model: Any = load_causal_lm(str(study.teacher), config)
    model.save_pretrained(out)
    copy_tokenizer(str(study.teacher), str(out))
    return out


def save(results: dict, out: Path) -> None:
    """Write the JSON atomically; the table and the plot once the steps are chosen."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce.json.tmp").write_text(json.dumps(results, indent=1) + "\n")
    (out / "reproduce.json.tmp").replace(out / "reproduce.json")
    if results["settings"].get("tokens_per_run"):
        (out / "reproduce.md").write_text(markdown(results))
        plot(results, out / "reproduce.png")


# ---------------------------------------------------------------------------------- main
def load_results(study: Any, name: str = "reproduce", empty: tuple[str, ...] = ("runs",)) -> dict:
    """The results of an earlier invocation of the same study (resume), else a new record.

    ``name`` is the study's (``<out>/<name>.json``); ``empty`` its per-run tables.
    """
    path, args = Path(study.args.out) / f"{name}.json", study.args
    if args.fresh or not path.is_file():
        settings = {"steps": args.steps, "seeds_done": []}
        new = {"benchmark": name, "fingerprint": study.fingerprint(), "settings": settings}
        return new | {key: {} for key in empty} | {"invocations": []}
    results = json.loads(path.read_text())
    done = results["settings"]["steps"]
    if results["fingerprint"] != study.fingerprint():
        raise SystemExit(
            f"{path} holds another study (recipe, configs or evaluation sizes "
            "differ); pass --fresh to start over, or another --out"
        )
    if args.steps is not None and done not in (None, args.steps):
        raise SystemExit(f"{path} holds runs of {done} steps; drop --steps or pass --fresh")
    results["settings"]["steps"] = done or args.steps
    return results


def references(
    study: Any,
    results: dict,
    evaluate_fn: Callable = evaluate,
    save_fn: Callable = save,
    say: Callable = log,
) -> None:
    """Evaluate the teacher and the untrained extended student, once per study.

    ``evaluate_fn``, ``save_fn`` and ``say`` are the study's own (the paper study passes its).
    """
    if not results.get("untrained"):
        results["teacher"] = {"eval": evaluate_fn(study, study.teacher, long=False)}
        untrained = save_untrained_student(study, study.work / "untrained")
        results["untrained"] = {"eval": evaluate_fn(study, untrained)}
        save_fn(results, Path(study.args.out))
    say(f"teacher and untrained student evaluated ({results['untrained']['eval']['seconds']} s)")


def choose_steps(study: Study, results: dict, invocation: dict) -> int:
    """``--steps``, else the steps of the runs already done, else the budget plan."""
    if results["settings"]["steps"] is None:
        start, eval_s = time.perf_counter(), results["untrained"]["eval"]["seconds"]
        costs = calibrate(study)
        invocation["calibration_s"] = round(time.perf_counter() - start, 1)
        elapsed, seeds = time.perf_counter() - START, study.args.seeds
        steps = plan_steps(study.args.budget * 60, elapsed, costs, eval_s, seeds)
        run_s = {n: c["overhead_s"] + steps * c["steady_step_s"] + eval_s for n, c in costs.items()}
        total = elapsed + seeds * sum(run_s.values())
        results["plan"] = {"costs": costs, "eval_s": eval_s, "run_s": run_s, "total_s": total}
        results["settings"]["steps"] = steps
        each = ", ".join(f"{METHODS[n]} {s:.0f} s" for n, s in run_s.items())
        log(f"plan: {steps} steps per run ({each}); study about {total / 60:.0f} min")
    steps = results["settings"]["steps"]
    tokens = {
        n: {k: v * steps for k, v in tokens_per_step(c).items()} for n, c in study.configs.items()
    }
    results["settings"]["tokens_per_run"] = tokens
    passes = (
        tokens["longred-c"]["long"] / study.lengths["long"] / results["settings"]["samples"]["long"]
    )
    results["settings"]["long_stream_passes"] = round(passes, 3)  # > 1: long samples repeat
    log(
        f"{steps} optimizer steps per run ({passes:.2f} passes over the long samples); "
        f"training tokens per run: {json.dumps(tokens)}"
    )
    return steps


def run_all(study: Study, results: dict, steps: int) -> None:
    """Train and evaluate every (method, seed) not yet in ``results``, seed after seed."""
    todo = [(n, s) for s in range(study.args.seeds) for n in METHODS]
    todo = [(n, s) for n, s in todo if f"{n}/seed{s}" not in results["runs"]]
    cost: dict[str, float] = dict(results.get("plan", {}).get("run_s", {}))
    for i, (name, seed) in enumerate(todo):
        log(f"run {i + 1}/{len(todo)}: {METHODS[name]} seed {seed}, {steps} steps")
        run_dir = study.work / "runs" / name / f"seed{seed}"
        record: dict[str, Any] = {"method": name, "seed": seed, "steps": steps}
        record["fit"] = fit(run_config(study, name, seed, steps, run_dir), run_dir)
        record["eval"] = evaluate(study, run_dir / "student")
        results["runs"][f"{name}/seed{seed}"] = record
        results["settings"]["seeds_done"] = sorted({r["seed"] for r in results["runs"].values()})
        save(results, Path(study.args.out))
        cost[name] = record["fit"]["wall_s"] + record["eval"]["seconds"]
        left = sum(cost.get(n, cost[name]) for n, _ in todo[i + 1 :])
        row = scalars(record["eval"], results["teacher"]["eval"])
        kept = ", ".join(f"{d} {row[f'retention/{d}']:.3f}" for d in DOMAINS)
        log(f"  {cost[name]:.0f} s; short-text retention {kept}; ETA {hms(left)}")


def start_invocation(
    results: dict, args: argparse.Namespace, argv: list[str] | None, lengths: dict[str, int]
) -> dict[str, Any]:
    """Record this invocation (start, arguments, machine) and its settings in ``results``."""
    invocation: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": machine_info(torch.device("cpu")),
    }
    results["invocations"].append(invocation)
    given = {k: v for k, v in vars(args).items() if k != "steps"}  # steps: choose_steps
    results["settings"].update(given | {"lengths": lengths})
    return invocation


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global START
    START = time.perf_counter()  # the budget counts from here
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    study = Study.load(args)
    results = load_results(study)
    invocation = start_invocation(results, args, argv, study.lengths)
    results["teacher_build"] = ensure_teacher(study)
    invocation["teacher_s"] = results["teacher_build"]["seconds"]
    start = time.perf_counter()
    study.samples = results["settings"]["samples"] = prepare_data(study)
    invocation["data_s"] = round(time.perf_counter() - start, 1)
    log(f"shards in {study.data}: {study.samples}")
    references(study, results)
    steps = choose_steps(study, results, invocation)
    run_all(study, results, steps)
    invocation["total_s"] = round(time.perf_counter() - START, 1)
    results["complete"] = len(results["runs"]) >= len(METHODS) * args.seeds
    save(results, Path(args.out))
    print(markdown(results))
    log(f"wrote {args.out}/reproduce.json, reproduce.md, reproduce.png")
    return results

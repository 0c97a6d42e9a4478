"""Document masks on long data packed from short documents, on the embedded default.

Real corpora have few documents as long as the target window, so long samples are packed
from shorter ones. This study packs them from SHORT documents: the train plays of the demo
corpus are split into groups of consecutive speeches of at most ``--doc-chars`` characters
(a few hundred tokens), shuffled so that neighbours are unrelated (fixed seed, the same
shards for every run) and packed into 1024-token samples by the library's ``write_shards``
(``pack=True``: the shards record each sample's document starts, as ``longred prepare
--pack``). Everything else is the quickstart (``configs/quickstart.yaml``: the demo teacher
of ``configs/teacher/tiny-llama.yaml``, ABF to 1024 tokens, LongReD-C, the published
schedule, short and s2l streams of whole train plays packed at 128 and 256 tokens,
written by the demo's own ``prepare_demo_data``).

Two arms, identical but for ``data.long.document_mask``: ``false`` (unmasked: a token
attends to the unrelated documents before it, positions run 0..1023) and ``true`` (each
document read alone: positions restart, attention and labels stay inside it). The short
stream keeps the library default in both arms (masks on where its shards record
boundaries: whole plays, so about one boundary in 380 samples); s2l is never masked. Each
arm trains for the same optimizer steps with seeds 0..N-1 (``seed_everything``,
``model.seed``, ``data.seed``), and the library's ``evaluate_model`` measures every student,
the teacher and the untrained extended student: long perplexity by position bucket on the
held-out plays read contiguously (1024-token samples, never packed), and short perplexity
and retention ``exp(loss_teacher - loss_model)`` on held-out 256-token samples.

``--budget`` (minutes for the whole study) sets the steps from measured costs, as in
:mod:`experiments.reproduce`. Outputs in ``--out`` (default
``experiments/document_masks/results``): ``document_masks.json`` (every figure, settings,
wall times, machine), ``document_masks.md`` (mean +- std over seeds, paired differences)
and ``document_masks.png``. An interrupted study resumes: runs already in the JSON are
skipped. The teacher is the demo's (``artifacts/teacher``, built if absent).

    python -m experiments.document_masks     # --budget 25: planned to fit 25 minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import ROOT, quiet
from experiments.document_masks.documents import SHUFFLE_SEED, pack_documents, short_documents
from experiments.document_masks.report import ARMS, BASE, DOMAIN, NAME, markdown, plot, scalars
from experiments.reproduce import study as first_study
from experiments.reproduce.study import fit, hms, plan_steps, tokens_per_step

RESULTS = Path(__file__).resolve().parent / "results"
LONG_MASK = {"unmasked": False, "masked": True}
"""``data.long.document_mask`` of each arm (True: refused if the shards had no boundaries)."""
DEMO_STREAMS = ("short", "s2l", "val_short", "val_long")
"""The quickstart's streams as ``longred demo`` writes them (val: the three held-out plays)."""
START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{NAME} {hms(time.perf_counter() - START)}] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = first_study.study_parser(
        "python -m experiments.document_masks",
        __doc__,
        budget=25.0,
        out=RESULTS,
        recipe="configs/teacher/tiny-llama.yaml",
        configs="configs",
        work="artifacts/document_masks",
    )
    p.set_defaults(num_long=64)
    add = p.add_argument
    add("--teacher", default=str(ROOT / "artifacts/teacher"), help="demo teacher (built if absent)")
    add("--doc-chars", type=int, default=1200, help="longest short document, in characters")
    return p.parse_args(argv)


# ------------------------------------------------------------------------- the study
def for_study(quickstart: dict) -> dict:
    """The quickstart config as a study run: no validation or checkpoints during the fit
    (``evaluate_model`` measures the exported student), no loader worker process."""
    cfg = copy.deepcopy(quickstart)
    for key in ("val_short", "val_long"):
        cfg["data"].pop(key, None)
    cfg["data"]["num_workers"] = 0
    trainer = cfg["trainer"]
    for key in ("val_check_interval", "check_val_every_n_epoch"):
        trainer.pop(key, None)
    trainer.update(limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False)
    return cfg


@dataclass
class Study(first_study.Study):
    """The first study's stages on the quickstart config: ``configs[BASE]`` is it as a study
    run, each arm the same with its ``data.long.document_mask``."""

    documents: dict[str, Any] | None = None

    @classmethod
    def read_configs(cls, args: argparse.Namespace) -> tuple[dict[str, str], dict[str, dict]]:
        text = (Path(args.configs) / "quickstart.yaml").read_text()
        configs = {BASE: for_study(yaml.safe_load(text))}
        for arm, on in LONG_MASK.items():
            configs[arm] = copy.deepcopy(configs[BASE])
            configs[arm]["data"]["long"]["document_mask"] = on
        return {"quickstart": text}, configs

    @property
    def teacher(self) -> Path:
        return Path(self.args.teacher)

    def eval_sizes(self) -> list[int]:
        return [self.args.num_short, self.args.num_long]

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "doc_chars": self.args.doc_chars, "masks": LONG_MASK}


def prepare_data(study: Study) -> tuple[dict[str, int], dict[str, Any]]:
    """The long shards packed from short documents, and the quickstart's other streams
    (``prepare_demo_data``); sample counts and the long stream's document figures. Cached
    by their spec (a changed spec rewrites them all)."""
    from longred_pl.data.prepare import tokenize_documents
    from longred_pl.data.tokenizer import load_tokenizer
    from longred_pl.demo.corpora import load_corpus
    from longred_pl.demo.run import prepare_demo_data

    spec = {k: v for k, v in study.fingerprint().items() if k not in ("configs", "eval")}
    manifest = study.data / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["spec"] == spec:
        saved = json.loads(manifest.read_text())
        return saved["samples"], saved["documents"]
    shutil.rmtree(study.data, ignore_errors=True)
    quickstart = yaml.safe_load(study.texts["quickstart"])["data"]  # with its val streams
    streams = {k: {**quickstart[k], "urls": str(study.data / k)} for k in DEMO_STREAMS}
    prepare_demo_data({"data": streams}, str(study.teacher), DOMAIN)
    tokenizer = load_tokenizer(study.teacher)
    docs = short_documents(load_corpus(DOMAIN, "train"), study.args.doc_chars)
    token_docs = [d.input_ids for d in tokenize_documents(docs, tokenizer, progress=False)]
    source = {"corpus": DOMAIN, "split": "train", "doc_chars": study.args.doc_chars}
    source |= {"shuffle_seed": SHUFFLE_SEED, "spec": spec}
    documents = pack_documents(
        token_docs,
        study.data / "long",
        study.lengths["long"],
        len(tokenizer),
        samples_per_shard=64,
        tokenizer_name=str(study.teacher),
        source=source,
    )
    samples = {k: _num_samples(study.data / k) for k in ("long", *streams)}
    record = {"spec": spec, "samples": samples, "documents": documents}
    manifest.write_text(json.dumps(record, indent=2) + "\n")
    return samples, documents


def _num_samples(stream: Path) -> int:
    return int(json.loads((stream / "index.json").read_text())["num_samples"])


def evaluate(study: Study, model_dir: Path, long: bool = True) -> dict[str, Any]:
    """``evaluate_model`` on the held-out plays: short text (256 tokens) and long text read
    contiguously (1024 tokens, 8 position buckets); the copy probe is not reported."""
    from longred_pl.arguments import ModelLoading
    from longred_pl.eval.evaluator import evaluate_model
    from longred_pl.eval.settings import EvalData, Probes

    assert study.samples is not None, "prepare_data first"
    start, n, args = time.perf_counter(), study.samples, study.args
    data = EvalData(
        str(study.data / "val_short"),
        study.lengths["val_short"],
        str(study.data / "val_long") if long else None,
        study.lengths["long"] if long else None,
        num_short=min(args.num_short, n["val_short"]),
        num_long=min(args.num_long, n["val_long"]),
        batch_size=8,
        buckets=8,
        order="spread",
    )
    probes = Probes(copy_span=2, copy_trials=1, copy_distances=[0], seed=0)
    result = evaluate_model(
        str(model_dir), data, probes, ModelLoading(device="cpu"), progress=False
    )
    return {
        "short": {DOMAIN: result["short"]},
        "long": {DOMAIN: result["long"]},
        "window": result["window"],
        "rope": result["rope"],
        "seconds": round(time.perf_counter() - start, 2),
    }


def save(results: dict, out: Path) -> None:
    """Write the JSON atomically; the table and the plot once a run is in."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json.tmp").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{NAME}.json.tmp").replace(out / f"{NAME}.json")
    if results["runs"]:
        (out / f"{NAME}.md").write_text(markdown(results))
        plot(results, out / f"{NAME}.png")


def choose_steps(study: Study, results: dict, invocation: dict) -> int:
    """``--steps``, else the steps of the runs already done, else the budget plan from one
    calibration fit per arm; the tokens each run trains on."""
    settings = results["settings"]
    if settings["steps"] is None:
        start, eval_s = time.perf_counter(), results["untrained"]["eval"]["seconds"]
        costs = first_study.calibrate(study, {a: a for a in ARMS}, say=log)
        invocation["calibration_s"] = round(time.perf_counter() - start, 1)
        elapsed, seeds = time.perf_counter() - START, study.args.seeds
        settings["steps"] = plan_steps(study.args.budget * 60, elapsed, costs, eval_s, seeds)
        steps = settings["steps"]
        run_s = {a: c["overhead_s"] + steps * c["steady_step_s"] + eval_s for a, c in costs.items()}
        total = elapsed + seeds * sum(run_s.values())
        results["plan"] = {"costs": costs, "eval_s": eval_s, "run_s": run_s, "total_s": total}
        log(f"plan: {steps} steps per run; study about {total / 60:.0f} min")
    steps = settings["steps"]
    per_step = tokens_per_step(study.configs[BASE])
    settings["tokens_per_run"] = {a: {k: v * steps for k, v in per_step.items()} for a in ARMS}
    passes = per_step["long"] * steps / study.lengths["long"] / settings["samples"]["long"]
    settings["long_stream_passes"] = round(passes, 3)  # > 1: long samples repeat
    log(f"{steps} optimizer steps per run ({passes:.2f} passes over the long samples)")
    return steps


def run_all(study: Study, results: dict, steps: int) -> None:
    """Train and evaluate every (arm, seed) not yet in ``results``, both arms seed by seed."""
    todo = [(a, s) for s in range(study.args.seeds) for a in ARMS]
    todo = [(a, s) for a, s in todo if f"{a}/seed{s}" not in results["runs"]]
    for i, (arm, seed) in enumerate(todo):
        log(f"run {i + 1}/{len(todo)}: {ARMS[arm]}, seed {seed}, {steps} steps")
        run_dir = study.work / "runs" / arm / f"seed{seed}"
        record: dict[str, Any] = {"method": arm, "seed": seed, "steps": steps}
        record["fit"] = fit(first_study.run_config(study, arm, seed, steps, run_dir), run_dir)
        record["eval"] = evaluate(study, run_dir / "student")
        results["runs"][f"{arm}/seed{seed}"] = record
        results["settings"]["seeds_done"] = sorted({r["seed"] for r in results["runs"].values()})
        save(results, Path(study.args.out))
        row = scalars(record["eval"], results["teacher"]["eval"])
        wall = record["fit"]["wall_s"] + record["eval"]["seconds"]
        log(
            f"  {wall:.0f} s; long ppl {row['long_ppl']:.2f}, short ppl {row['short_ppl']:.2f}, "
            f"retention {row['retention']:.4f}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global START
    START = time.perf_counter()  # the budget counts from here
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    study = Study.load(args)
    results = first_study.load_results(study, NAME)
    invocation = first_study.start_invocation(results, args, argv, study.lengths)
    results["teacher_build"] = first_study.ensure_teacher(study, say=log)
    invocation["teacher_s"] = results["teacher_build"]["seconds"]
    start = time.perf_counter()
    study.samples, study.documents = prepare_data(study)
    results["settings"].update(samples=study.samples, long_documents=study.documents)
    invocation["data_s"] = round(time.perf_counter() - start, 1)
    log(f"shards in {study.data}: {study.samples}; long stream: {json.dumps(study.documents)}")
    first_study.references(study, results, evaluate_fn=evaluate, save_fn=save, say=log)
    steps = choose_steps(study, results, invocation)
    run_all(study, results, steps)
    invocation["total_s"] = round(time.perf_counter() - START, 1)
    results["complete"] = len(results["runs"]) >= len(ARMS) * args.seeds
    save(results, Path(args.out))
    print(markdown(results))
    log(f"wrote {args.out}/{NAME}.json, {NAME}.md, {NAME}.png")
    return results

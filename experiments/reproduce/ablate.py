"""Ablation of the reproduction study: LongReD-C with other distillation weights.

Trains `configs/reproduce/longred-c.yaml` (seed 0, 211 optimizer steps, as in the study's
committed run) with `model.short_weight` / `model.s2l_weight` changed, then evaluates the
student on both domains' held-out data as the study does (:func:`study.evaluate`). Needs
the study's teacher and shards (`python -m experiments.reproduce` first; any flag other than
this script's own is the study's, e.g. `--work`). The committed figures of
`--short-weight 50 --s2l-weight 100` are `experiments/reproduce/results/ablation_w10x.json`.

    python -m experiments.reproduce.ablate --short-weight 50 --s2l-weight 100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import ROOT, quiet
from experiments.reproduce import study as study_lib
from experiments.reproduce.report import DOMAINS

# eval.json per domain: (its name, the evaluation's part, that part's key)
FIGURES = [
    ("short_loss", "short", "loss"),
    ("short_ppl", "short", "ppl"),
    ("long_ppl", "long", "ppl"),
]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """This ablation's flags, and the rest: the study's (``--work``, ``--num-short``, ...)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.reproduce.ablate",
        description=__doc__.splitlines()[0],
        epilog="Any other flag is the study's (python -m experiments.reproduce --help), "
        "e.g. --work: where its teacher and shards are.",
    )
    parser.add_argument("--short-weight", type=float, default=50.0)
    parser.add_argument("--s2l-weight", type=float, default=100.0)
    parser.add_argument("--steps", type=int, default=211)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "artifacts/reproduce/ablation/w10x"))
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Fit and evaluate; returns (and writes to ``--out``/eval.json) the per-domain figures."""
    args, study_argv = parse_args(argv)
    quiet()
    study = study_lib.Study.load(study_lib.parse_args(study_argv))
    if not (study.teacher / "config.json").is_file():
        raise SystemExit(
            f"no teacher in {study.teacher}: run `python -m experiments.reproduce` first"
        )
    study.samples = study_lib.prepare_data(study)  # the study's shards (cached by their spec)
    out = Path(args.out)
    cfg = study_lib.run_config(study, "longred-c", args.seed, args.steps, out)
    cfg["model"].update(short_weight=args.short_weight, s2l_weight=args.s2l_weight)
    study_lib.fit(cfg, out)
    ev = study_lib.evaluate(study, out / "student")
    results = {d: {name: ev[part][d][key] for name, part, key in FIGURES} for d in DOMAINS}
    print(json.dumps(results, indent=1))
    (out / "eval.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

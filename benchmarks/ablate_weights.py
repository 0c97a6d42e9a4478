"""Ablation of the reproduction study: LongReD-C with other distillation weights.

Trains `configs/reproduce/longred-c.yaml` (seed 0, 211 optimizer steps, as in
`reproduce.py`'s run) with `model.short_weight` / `model.s2l_weight` changed, then
evaluates the student on both domains' held-out data exactly as `reproduce.py` does.
Needs the study's teacher and shards (`python benchmarks/reproduce.py` first).

    python benchmarks/ablate_weights.py --short-weight 50 --s2l-weight 100
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-weight", type=float, default=50.0)
    parser.add_argument("--s2l-weight", type=float, default=100.0)
    parser.add_argument("--steps", type=int, default=211)
    parser.add_argument("--out", default="artifacts/reproduce/ablation/w10x")
    args = parser.parse_args(argv)
    cfg = copy.deepcopy(yaml.safe_load(Path("configs/reproduce/longred-c.yaml").read_text()))
    cfg["trainer"]["max_steps"] = args.steps
    cfg["trainer"]["default_root_dir"] = args.out
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = args.out
    cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] = args.out + "/student"
    cfg["model"]["short_weight"] = args.short_weight
    cfg["model"]["s2l_weight"] = args.s2l_weight
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "config.yaml").write_text(yaml.safe_dump(cfg))

    from longred_pl.cli import main as cli_main
    from longred_pl.eval.evaluator import evaluate_model

    cli_main(["fit", "--config", args.out + "/config.yaml"])
    results = {}
    for domain in ("shakespeare", "python"):
        ev = evaluate_model(
            args.out + "/student", f"artifacts/reproduce/data/val_short_{domain}", 256,
            f"artifacts/reproduce/data/val_long_{domain}", 1024, num_short=128, num_long=24,
            batch_size=8, buckets=8, seed=0, device="cpu", progress=False,
            copy_span=2, copy_trials=1, copy_distances=[0],
        )  # fmt: skip
        results[domain] = {
            "short_loss": ev["short"]["loss"],
            "short_ppl": ev["short"]["ppl"],
            "long_ppl": ev["long"]["ppl"],
        }
    print(json.dumps(results, indent=1))
    Path(args.out, "eval.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

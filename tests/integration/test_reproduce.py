"""``experiments.reproduce`` end to end on a tiny two-domain teacher, and its budget plan.

The tiny study runs every stage the real one runs (teacher build, shards, evaluation of the
teacher and the untrained student, calibration fits, four methods, report, resume), with
a 47K-parameter teacher trained for 20 steps on 120 KB per corpus and 2 optimizer steps
per method. Its figures mean nothing; the test checks that they are all there, computed
from the right runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from tests_helpers import tiny_study_args

from experiments.reproduce import report, study

PNG = b"\x89PNG\r\n\x1a\n"
LABELS = ["Teacher (window 256)", "ABF, untrained", "Long+CPT", "Mix+CPT", "LongReD-C", "LongReD-U"]


@pytest.fixture()
def reproduce():
    """The study module; the torch thread count it sets (``--threads``) is restored after."""
    threads = torch.get_num_threads()
    yield study
    torch.set_num_threads(threads)


def tiny_args(tmp_path: Path) -> list[str]:
    return tiny_study_args(tmp_path, "--copy-trials", "2")


def long_samples(run: dict, steps: int) -> list[list[int]]:
    """The long samples a run's data module serves in its first ``steps`` optimizer steps."""
    from longred_pl.data.datamodule import MixedLengthDataModule, StreamConfig

    config = yaml.safe_load(Path(run["fit"]["config"]).read_text())
    data, accumulate = config["data"], config["trainer"]["accumulate_grad_batches"]
    streams = {k: StreamConfig(**data[k]) for k in ("long", "short", "s2l") if data.get(k)}
    others = {k: data[k] for k in ("schedule", "num_workers", "seed", "shuffle_buffer")}
    loader = iter(MixedLengthDataModule(**streams, **others).train_dataloader())
    batches = [next(loader) for _ in range(steps * accumulate)]
    return [b["input_ids"][0].tolist() for b in batches if b["kind"] == "long"]


def test_reproduce_end_to_end_then_resume(reproduce, tmp_path, monkeypatch):
    planned = {}

    def two_steps(budget_s, elapsed_s, costs, eval_s, seeds):
        planned.update(costs=costs, seeds=seeds, budget_s=budget_s)
        return 2

    monkeypatch.setattr(reproduce, "plan_steps", two_steps)  # the real plan is tested below
    results = reproduce.main(tiny_args(tmp_path))
    out = tmp_path / "out"
    saved = json.loads((out / "reproduce.json").read_text())
    assert saved["complete"] and saved["settings"]["steps"] == 2
    assert planned["seeds"] == 1 and planned["budget_s"] == 3600
    assert set(planned["costs"]) == set(reproduce.METHODS)
    assert all(c["steady_step_s"] > 0 for c in planned["costs"].values())
    assert saved["teacher_build"]["built_now"] and saved["teacher_build"]["num_parameters"] > 0

    runs = saved["runs"]
    assert sorted(runs) == sorted(f"{m}/seed0" for m in reproduce.METHODS)
    for key, run in runs.items():
        assert len(run["fit"]["step_s"]) == 2, key
        config = yaml.safe_load(Path(run["fit"]["config"]).read_text())
        assert config["seed_everything"] == config["model"]["seed"] == config["data"]["seed"] == 0
        assert config["trainer"]["max_steps"] == 2
        assert (Path(run["fit"]["config"]).parent / "student" / "config.json").is_file()
        for domain in reproduce.DOMAINS:
            assert run["eval"]["short"][domain]["tokens"] == 8 * 255
            buckets = run["eval"]["long"][domain]["buckets"]
            assert len(buckets) == 8 and buckets[-1]["end"] == 1024
        assert max(map(int, run["eval"]["copy"]["accuracy"])) == 1024 - 2 * 16 - 1
    teacher = saved["teacher"]["eval"]
    assert teacher["window"] == 256 and teacher["long"] == {"shakespeare": None, "python": None}
    assert max(map(int, teacher["copy"]["accuracy"])) == 256 - 2 * 16 - 1

    # Same long samples and steps for every method; Long+CPT reads the long stream only.
    tokens = saved["settings"]["tokens_per_run"]
    assert {t["long"] for t in tokens.values()} == {2 * 8 * 1024}
    assert tokens["long-cpt"] == {"long": 2 * 8 * 1024, "short": 0, "s2l": 0}
    assert tokens["longred-c"] == {
        "long": 2 * 8 * 1024,
        "short": 2 * 6 * 8 * 128,
        "s2l": 2 * 2 * 4 * 256,
    }

    assert long_samples(runs["long-cpt/seed0"], 2) == long_samples(runs["longred-c/seed0"], 2)
    passes = saved["settings"]["long_stream_passes"]
    assert passes == pytest.approx(2 * 8 / saved["settings"]["samples"]["long"], abs=1e-3)

    table = report.summary(saved)
    assert list(table) == LABELS and all(table[label]["n"] == 1 for label in LABELS)
    assert table["Teacher (window 256)"]["retention/python"] == (1.0, 0.0)
    run = runs["longred-u/seed0"]["eval"]
    expected = math.exp(teacher["short"]["python"]["loss"] - run["short"]["python"]["loss"])
    assert table["LongReD-U"]["retention/python"][0] == pytest.approx(expected)
    markdown = (out / "reproduce.md").read_text()
    assert all(f"| {label} | 1 |" in markdown for label in LABELS)
    assert (out / "reproduce.png").read_bytes()[:8] == PNG
    assert results["runs"].keys() == runs.keys()

    # Resume: every run is in the JSON, so nothing trains again and the steps are kept.
    def no_fit(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(reproduce, "fit", no_fit)
    again = reproduce.main([*tiny_args(tmp_path), "--steps", "2"])
    assert again["runs"] == saved["runs"] and len(again["invocations"]) == 2
    assert not again["teacher_build"]["built_now"]
    with pytest.raises(SystemExit, match="another study"):
        reproduce.main([*tiny_args(tmp_path), "--num-short", "4"])
    with pytest.raises(SystemExit, match="holds runs of 2 steps"):
        reproduce.main([*tiny_args(tmp_path), "--steps", "3"])


def test_plan_steps_fills_the_budget_and_refuses_a_too_small_one(reproduce):
    costs = {
        "a": {"steady_step_s": 1.0, "overhead_s": 10.0},
        "b": {"steady_step_s": 2.0, "overhead_s": 10.0},
    }
    # 900 s left; fixed 2 seeds x (10 + 5) x 2 methods = 60 s; 2 x 3 s per step -> 140 steps.
    steps = reproduce.plan_steps(1000, 100, costs, 5.0, 2, reserve_s=0.0, margin=1.0)
    assert steps == 140 and 60 + 6 * steps <= 900 < 60 + 6 * (steps + 1)
    assert reproduce.plan_steps(1000, 100, costs, 5.0, 2, reserve_s=0.0, margin=0.5) == 65
    with pytest.raises(SystemExit, match="raise --budget"):
        reproduce.plan_steps(150, 100, costs, 5.0, 2, reserve_s=0.0, margin=1.0)


def test_streams_mix_domains_evenly_and_held_out_sets_span_the_split(reproduce):
    assert reproduce.interleave([1, 2, 3], ["a", "b"]) == [1, "a", 2, "b"]
    assert reproduce.spread(list(range(10)), 4) == [0, 2, 5, 7]
    assert reproduce.spread([1, 2], 4) == [1, 2]


@pytest.mark.slow
def test_budget_plan_two_seeds_then_the_weight_ablation(reproduce, tmp_path):
    """The real plan (calibration fits, steps from ``--budget``), two seeds, the ablation.

    About 4 minutes on 2 cores: the study fills a 4-minute budget by construction.
    """
    from experiments.reproduce import ablate

    args = [*tiny_args(tmp_path), "--budget", "4"]
    args[args.index("--seeds") + 1] = "2"
    results = reproduce.main(args)
    steps, plan, runs = results["settings"]["steps"], results["plan"], results["runs"]
    assert steps >= 1 and set(plan["costs"]) == set(reproduce.METHODS)
    assert plan["total_s"] <= 4 * 60  # the plan's own estimate of the study fits the budget
    assert sorted(runs) == sorted(f"{m}/seed{s}" for m in reproduce.METHODS for s in (0, 1))
    assert all(len(run["fit"]["step_s"]) == steps for run in runs.values())
    # The seeds differ where they should: the data order (data.seed).
    seed0, seed1 = runs["longred-c/seed0"], runs["longred-c/seed1"]
    assert long_samples(seed0, 1) != long_samples(seed1, 1)
    table = report.summary(results)
    assert [table[label]["n"] for label in LABELS] == [1, 1, 2, 2, 2, 2]
    assert "| LongReD-C | 2 |" in (tmp_path / "out" / "reproduce.md").read_text()

    study_flags = tiny_args(tmp_path)  # the same study; the ablation has its own --out
    del study_flags[study_flags.index("--out") : study_flags.index("--out") + 2]
    out = tmp_path / "ablation"
    figures = ablate.main(["--steps", "2", "--out", str(out), "--short-weight", "50", *study_flags])
    config = yaml.safe_load((out / "run_config.yaml").read_text())
    assert config["model"]["short_weight"] == 50 and config["model"]["s2l_weight"] == 100
    assert config["trainer"]["max_steps"] == 2
    assert sorted(figures) == sorted(reproduce.DOMAINS)
    for domain, row in figures.items():
        assert row["short_ppl"] == pytest.approx(math.exp(row["short_loss"]), rel=1e-6), domain
        assert math.isfinite(row["long_ppl"]), domain
    assert json.loads((out / "eval.json").read_text()) == figures

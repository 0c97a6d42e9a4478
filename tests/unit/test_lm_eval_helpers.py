"""lm-eval plumbing that needs no lm-eval: the argument checks, the result assembly, and
lm-eval's console output kept in a log file instead of the console."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from longred_pl.errors import UserError
from longred_pl.eval.harness import into_log, log_path
from longred_pl.eval.lm_eval_bridge import check_arguments, check_counts, lm_eval_result


def test_each_count_out_of_range_is_named_with_its_flag():
    check_counts(1, None, 0)
    check_counts(4, 0.5, 100)
    with pytest.raises(UserError, match=r"^--batch-size must be >= 1 \(got 0\)$"):
        check_counts(0, None, 0)
    with pytest.raises(UserError, match=r"^--limit must be > 0: .*\(got -1\)$"):
        check_counts(1, -1, 0)
    with pytest.raises(UserError, match=r"^--bootstrap-iters must be >= 0; .*\(got -2\)$"):
        check_counts(1, None, -2)


def test_check_arguments_splits_ruler_from_other_tasks_and_refuses_what_cannot_run():
    assert check_arguments([" hellaswag", "ruler", ""], [512], 5, 4, 0) == (
        ["ruler"],
        ["hellaswag"],
    )
    with pytest.raises(UserError, match="^--tasks: give at least one"):
        check_arguments([" ", ""], None, None, 4, 0)
    with pytest.raises(UserError, match="^--lengths is RULER's"):
        check_arguments(["hellaswag"], [512], None, 4, 0)
    with pytest.raises(UserError, match="^--limit: RULER takes prompts per task and length"):
        check_arguments(["ruler"], [512], 0.5, 4, 0)


def test_lm_eval_result_renames_metrics_and_keeps_the_settings():
    raw = {
        "results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A"}},
        "n-samples": {"t": {"original": 6, "effective": 3}},
        "higher_is_better": {"t": {"acc": True}},
        "versions": {"t": 1.0},
        "lm_eval_version": "0.4.13",
    }
    result = lm_eval_result("/m", raw, {"limit": 3})
    assert result == {
        "model": "/m",
        "tasks": {"t": {"acc": 0.5, "acc_stderr": None}},
        "n_samples": {"t": {"original": 6, "effective": 3}},
        "higher_is_better": {"t": {"acc": True}},
        "versions": {"t": "1.0"},
        "lm_eval_version": "0.4.13",
        "settings": {"limit": 3},
    }


def test_lm_eval_output_goes_to_the_log_file_and_not_the_console(tmp_path, capfd):
    log = tmp_path / "lm_eval.log"
    logger = logging.getLogger("lm_eval")
    before = logger.level, logger.propagate, list(logger.handlers)
    with into_log(str(log)):
        logging.getLogger("lm_eval.api.task").info("Building contexts for t on rank 0...")
        logging.getLogger("lm_eval.evaluator_utils").warning("No aggregation function defined")
        print("Max length 512 | Current length 480 | Noises: 40")  # vt's per-try prints
        sys.stderr.write("Generating samples:  40%|####      | 200/500\r")  # a tqdm bar
        subprocess.run(["sh", "-c", "echo 'fatal: not a git repository' >&2"], check=True)
    print("after")
    console = capfd.readouterr()
    assert console.out == "after\n" and console.err == ""
    text = log.read_text()
    for line in (
        "INFO [lm_eval.api.task] Building contexts",
        "WARNING [lm_eval.evaluator_utils] No aggregation",
        "Max length 512",
        "200/500",
        "fatal: not a git repository",
    ):
        assert line in text
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
    with into_log(str(log)):  # appended to, not replaced
        print("second")
    assert log.read_text().startswith(text) and log.read_text().endswith("second\n")


def test_without_a_log_a_new_file_is_made_and_said_in_one_line(tmp_path, capsys):
    assert log_path(str(tmp_path / "x.log"), "[p]") == str(tmp_path / "x.log")
    assert capsys.readouterr().out == ""  # a given log is the caller's to announce
    made = log_path(None, "[p]")
    try:
        out = capsys.readouterr().out
        assert (
            out
            == f"[p] lm-eval's log lines and progress bars go to {made} (tail -f it to follow)\n"
        )
    finally:
        os.unlink(made)

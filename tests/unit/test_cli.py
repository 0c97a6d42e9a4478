"""The console script's exit status and dispatch."""

import sys
from pathlib import Path

from longred_pl import cli


def test_console_returns_none_whatever_main_returns(monkeypatch):
    monkeypatch.setitem(cli.TOOLS, "demo", lambda argv: {"wall_time_s": 1.0})
    monkeypatch.setattr(sys, "argv", ["longred", "demo"])
    assert cli.console() is None  # a dict returned to sys.exit would mean exit status 1
    assert cli.main(["demo"]) == {"wall_time_s": 1.0}


def test_entry_point_is_console():
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()  # tomllib needs 3.11
    assert 'longred = "longred_pl.cli:console"' in text

"""The console script's exit status, dispatch and flag handling."""

import subprocess
import sys
from pathlib import Path

import pytest

from longred_pl import cli
from longred_pl.errors import UserError


def test_console_returns_none_whatever_main_returns(monkeypatch):
    monkeypatch.setattr(cli, "run_tool", lambda name, argv: {"wall_time_s": 1.0})
    monkeypatch.setattr(sys, "argv", ["longred", "demo"])
    assert cli.console() is None  # a dict returned to sys.exit would mean exit status 1
    assert cli.main(["demo"]) == {"wall_time_s": 1.0}


def test_entry_point_is_console():
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()  # tomllib needs 3.11
    assert 'longred = "longred_pl.cli:console"' in text


def test_top_level_help_imports_neither_lightning_nor_torch():
    code = "import sys; from longred_pl.cli import main; main(['--help']); print(sorted(m for m in sys.modules if m in ('torch', 'lightning', 'transformers')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    ).stdout
    assert "select-layers" in out and out.strip().endswith("[]"), out


def test_unknown_command_is_a_user_error():
    with pytest.raises(UserError, match="unknown command 'fitt'"):
        cli.main(["fitt"])


def _tool(
    ckpt: str,
    out_dir: str,
    files: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
    seq_len: int = 8,
) -> None:
    """A stand-in tool signature."""


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["a.ckpt", "out"], ["--ckpt=a.ckpt", "--out_dir=out"]),
        (["a.ckpt", "out", "--seq-len", "4"], ["--ckpt=a.ckpt", "--out_dir=out", "--seq_len", "4"]),
        (
            ["--files", "x.txt", "y.txt", "--force"],
            ["--files", '["x.txt", "y.txt"]', "--force", "true"],
        ),
        (["--no-progress", "--seq_len=3"], ["--progress=false", "--seq_len=3"]),
    ],
)
def test_normalise_flags(argv, expected):
    assert cli.normalise_flags(argv, _tool) == expected


def test_one_line_unwraps_a_dataloader_worker_traceback():
    err = UserError(
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nlongred_pl.errors.UserError: data.long: token id 9 is >= 8\n'
    )
    assert cli.one_line(err) == "data.long: token id 9 is >= 8"


def test_cuda_device_without_a_gpu_is_refused():
    import torch

    from longred_pl.models import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(UserError, match="--device cuda: no CUDA device here"):
        resolve_device("cuda")


def test_no_library_module_imports_the_command_line():
    """The CLI is the top floor: the library (demo included) never imports ``longred_pl.cli``."""
    import ast
    from pathlib import Path

    import longred_pl

    root = Path(longred_pl.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "cli.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "longred_pl.cli" or n.startswith("longred_pl.cli.") for n in names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_version_names_the_package_and_its_stack(capsys):
    from longred_pl import __version__
    from longred_pl.cli import main

    main(["--version"])
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"longred_pl {__version__} (torch ")
    assert "lightning " in out and "transformers " in out


@pytest.mark.parametrize("name", sorted(cli.TOOLS))
def test_every_tools_parser_builds_and_shows_the_positional_form(name, capsys):
    """Each tool's parser (its function and argument groups) builds: a clash of two flags
    (e.g. the demo's own --config) stopped `make demo` once."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: longred {name}" in capsys.readouterr().out

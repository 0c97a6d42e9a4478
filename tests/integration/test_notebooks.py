"""The notebooks: committed without outputs, and executable top to bottom (smoke mode).

Execution uses nbclient with an ipykernel kernel (both in the `dev` extra). The kernel spec
is written into a temporary ``JUPYTER_PATH`` with ``sys.executable`` as its interpreter, so
the notebooks run in exactly this test's environment on a fresh clone: no
``ipykernel install`` step, and no ``python3`` kernel spec of another Python (a user-level
one would shadow the venv's) can be picked up. Jupyter's and IPython's runtime files go to
the temporary directory too. ``LONGRED_NOTEBOOK_SMOKE=1`` makes each notebook build a tiny
teacher (and, for the results notebook, a 2-step fit) in ``LONGRED_NOTEBOOK_WORKDIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ("drift_analysis", "results")
KERNEL = "longred-test-python"


def test_both_notebooks_are_committed():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path):
    raw = json.loads(path.read_text())
    nb = nbformat.reads(path.read_text(), as_version=4)
    nbformat.validate(nb)
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name}: strip the outputs before committing"
            assert cell["execution_count"] is None, f"{path.name}: clear execution counts"
    assert "widgets" not in raw["metadata"]


@pytest.fixture()
def kernel_env(tmp_path, monkeypatch):
    """A kernel spec for this interpreter, and every Jupyter/IPython path under tmp_path."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "longred_pl tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("LONGRED_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("LONGRED_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return tmp_path / "work"


def execute(name: str) -> list[dict]:
    """Run notebooks/<name>.ipynb from the notebooks directory; the outputs of each code cell."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=240, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return [cell.outputs for cell in nb.cells if cell.cell_type == "code"]


def texts(outputs: list[list[dict]]) -> str:
    """Every printed or displayed text (stdout, markdown, plain) of the executed cells."""
    parts = []
    for cell in outputs:
        for out in cell:
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts += [data.get("text/markdown", ""), data.get("text/plain", "")]
    return "\n".join(parts)


def images(outputs: list[list[dict]]) -> int:
    return sum("image/png" in out.get("data", {}) for cell in outputs for out in cell)


def test_drift_analysis_runs_in_smoke_mode(kernel_env):
    outputs = execute("drift_analysis")
    shown = texts(outputs)
    assert "smoke=True" in shown
    assert "| index | cosine | 1 - cosine | attention KL |" in shown  # the per-layer table
    assert "| 2 | " in shown  # ... down to the final index of the 2-layer teacher
    assert "distill_layers: [1, 2]" in shown  # k=2 capped at the one intermediate layer
    assert "| yarn |" in shown
    assert images(outputs) == 1
    snippet = (kernel_env / "drift" / "distill_layers.yaml").read_text()
    assert "distill_layers: [1, 2]" in snippet
    assert (kernel_env / "drift" / "drift.png").stat().st_size > 0


def test_results_runs_in_smoke_mode(kernel_env):
    outputs = execute("results")
    shown = texts(outputs)
    assert "smoke=True" in shown
    csv = next((kernel_env / "quickstart" / "logs").glob("**/metrics.csv"))
    header = csv.read_text().splitlines()[0].split(",")
    assert {"train/loss_long", "train/loss_short", "train/loss_s2l", "val/ppl_short"} <= set(header)
    assert "| val/ppl_short | 1 |" in shown  # the last validation, at the second step
    assert "| teacher |" in shown and "| student |" in shown  # evaluator table
    # training losses, validation, long ppl by position, copy accuracy
    assert images(outputs[:-1]) == 4  # the last cell shows reproduce.png when it exists
    assert (kernel_env / "quickstart" / "student" / "config.json").is_file()
    assert (kernel_env / "results" / "eval" / "results.json").is_file()

"""``benchmarks/gpu_smoke.sh`` runs every part before a GPU is lent (toy sizes, this CPU).

The GPU minutes a task gets (15, all tries together) must not be spent on a script that
fails at its first import: ``SMOKE_TINY=1`` runs the same script, the same parts and the
same code paths at toy sizes on the CPU (the CUDA-only checks skip or fall back to the
CPU kernel); each part must pass and write its figures into ``gpu_smoke.json``.
"""

import json
import os
import subprocess
import sys

from benchmarks.common import ROOT


def test_gpu_smoke_dry_run_on_cpu(tmp_path):
    env = {
        **os.environ,
        "SMOKE_TINY": "1",
        "OUT": str(tmp_path / "out"),
        "PYTHON": sys.executable,
        "WORK": str(tmp_path / "work"),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_smoke.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "gpu_smoke.json").read_text())["parts"]
    assert list(result) == ["env", "ring", "gpu_tests", "recipe", "throughput"]
    assert all(part["status"] == "PASS" for part in result.values()), result
    assert result["ring"]["cases"] and all(c["cp"] in (2, 4) for c in result["ring"]["cases"])
    assert [s["step"] for s in result["recipe"]["steps"]] == ["0", "1"]
    assert {c["method"] for c in result["throughput"]["cases"]} == {"long_cpt", "longred"}
    assert (tmp_path / "out" / "gpu_smoke.log").read_text().count("=== ") >= 10

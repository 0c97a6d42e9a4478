#!/usr/bin/env bash
# GPU smoke of longred_pl, in one call of at most 8 minutes, for the machine this project is
# lent (one H200; torch 2.11.0+cu130, transformers 5.17, lightning 2.6.6, Python 3.12, no
# network). Runs from the repository root:   bash benchmarks/gpu_smoke.sh
#
# Wheels to carry: what that machine lacks (benchmarks/gpu_wheels.py computes the list from
# pyproject.toml, the image's package list and this environment; tests/unit/test_gpu_wheels.py
# checks this header against it): 5 pure-Python wheels, 1.0 MiB together. Once, here:
#   echo /.whl/ >> .git/info/exclude
#   python -m benchmarks.gpu_wheels .whl   # = pip download --no-deps --only-binary=:all:
#     --python-version 3.12 -d .whl braceexpand==0.1.7 docstring-parser==0.18.0
#     jsonargparse==4.53.0 typeshed-client==2.15.0 webdataset==1.0.2
# then one device call, naming .whl in carry:
#   run(command="bash benchmarks/gpu_smoke.sh", carry=[".whl"], timeout_s=540)
#   (the parts stop at BUDGET_S=450; the figures come back in $OUT)
# SMOKE_TINY=1 runs every part at toy sizes: on a CPU, the dry run of this script.
#
# It installs .whl/*.whl into /tmp/site without network (--no-index --no-deps), puts the
# repository and /tmp/site on PYTHONPATH (so every process it starts, Lightning's and
# pytest's included, imports longred_pl from this tree), then runs, each under its own
# time limit and all within BUDGET_S:
#   env         versions, the GPU, bf16, the measured bf16 matmul rate (MFU's denominator)
#   ring        (b) the ring's CUDA kernels without a second GPU: the ring simulated in one
#               process, 2 and 4 chunks, bf16 flash and fp32 memory-efficient, fwd + bwd,
#               against unsharded attention
#   gpu_tests   pytest -m gpu tests/gpu (bf16 matmul, flash-attn parity if installed, tiny
#               LongReD fits under FSDP1 and FSDP2 in bf16, unsharded-loss equality, RoPE
#               inv_freq kept fp32, a sharded FSDP1 checkpoint)
#   recipe      (a) configs/llama3-8b/32k-abf-longred-c.yaml + configs/trainer/fsdp2-8gpu.yaml
#               as written, ~1.2B random Llama, lengths / 4 (8K long), bf16-mixed, one GPU:
#               one step with clipping, a checkpoint, a resume for step 2, an export
#   throughput  (c) tokens/s and MFU of long_cpt and longred at 8K and 32K (activation
#               checkpointing), (d) the peak of one long micro-step next to the README's
#               estimate; its figures are written after each case
# Outputs in ${OUT:-benchmarks/results}: gpu_smoke.json (every part's figures and status)
# and gpu_smoke.log (everything printed). Exits nonzero if a part failed or timed out.
set -uo pipefail

OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
WORK=${WORK:-/tmp/longred_smoke}
DEADLINE=$((SECONDS + BUDGET_S))
mkdir -p "$OUT" "$WORK/parts"
LOG="$OUT/gpu_smoke.log"
: >"$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if compgen -G ".whl/*.whl" >/dev/null; then
  echo "installing $(ls .whl/*.whl | wc -l) wheel(s) from .whl/ into /tmp/site" | tee -a "$LOG"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
else
  echo "no .whl/: using the installed packages" | tee -a "$LOG"
fi
# every import the parts need, first: a missing package ends the run here, in seconds
if ! "$PY" -c "import torch, lightning, transformers, webdataset, jsonargparse, longred_pl.cli, \
longred_pl.module, longred_pl.parallel, benchmarks.gpu_smoke.parts; print('imports ok')" \
  2>&1 | tee -a "$LOG" | grep -q "imports ok"; then
  echo '{"parts": {}, "error": "imports failed: see gpu_smoke.log"}' >"$OUT/gpu_smoke.json"
  exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | tee -a "$LOG"

STATUS=()
# run_part NAME MAX_SECONDS COMMAND...: under a time limit; its status goes into the JSON.
run_part() {
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - SECONDS)) start=$SECONDS rc=0 status
  if ((left < 20)); then
    echo "=== $name: SKIP (no time left)" | tee -a "$LOG"
    STATUS+=("$name=SKIP (no time left)=0")
    return 0
  fi
  local limit=$((cap < left ? cap : left))
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=PASS ;;
    124 | 137) status="TIMEOUT (${limit}s)" ;;
    *) status="FAIL (rc $rc)" ;;
  esac
  echo "=== $name: $status" | tee -a "$LOG"
  STATUS+=("$name=$status=$((SECONDS - start))")
}

TINY=()
[[ ${SMOKE_TINY:-0} == 1 ]] && TINY=(--tiny)
# a part of benchmarks/gpu_smoke (a command line, not a function: `timeout` runs it)
part() { echo "$PY" -m benchmarks.gpu_smoke "$1" --work "$WORK" --json "$WORK/parts/$1.json" "${TINY[@]}"; }

run_part env 60 $(part env)
run_part ring 60 $(part ring)
run_part gpu_tests 90 "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider tests/gpu
run_part recipe 200 $(part recipe)
run_part throughput 300 $(part throughput)

"$PY" - "$WORK/parts" "$OUT/gpu_smoke.json" "${STATUS[@]}" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
parts, out, statuses = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
result = {"parts": {}}
for entry in statuses:
    name, status, seconds = entry.split("=")
    path = parts / f"{name}.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    result["parts"][name] = {"status": status, "seconds": int(seconds), **figures}
out.write_text(json.dumps(result, indent=2))
print("| part | status | seconds |\n|---|---|---|")
for name, part in result["parts"].items():
    print(f"| {name} | {part['status']} | {part['seconds']} |")
EOF
! printf '%s\n' "${STATUS[@]}" | grep -Eq '=(FAIL|TIMEOUT)'

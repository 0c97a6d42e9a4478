#!/usr/bin/env bash
# GPU smoke of longred_pl on one CUDA GPU (written for a single H200), about 8 minutes at most.
# Runs from the repository root:   bash benchmarks/gpu_smoke.sh
# Parts: CUDA + bf16; flash-attn vs sdpa parity (contiguous and s2l skipped ids with the
# all-ones mask; SKIP if flash_attn does not import); a bf16-mixed LongReD fit under
# lightning FSDPStrategy and under ModelParallelStrategy (FSDP2) on a tiny model; and
# benchmarks/step_cost.py at GPU sizes (vocab 128256, long 8192).
# Wheels in .whl/ (if any) are installed into /tmp/site, else the packages must be present.
# Outputs in ${OUT:-benchmarks/results}: gpu_smoke.log (everything printed),
# gpu_smoke_summary.md (the status table) and step_cost_gpu.json.
# Each part reports on its own; the script exits nonzero if any part failed or timed out.
set -euo pipefail

OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-470}  # all parts together, leaving time for start-up and copying back
DEADLINE=$((SECONDS + BUDGET_S))
mkdir -p "$OUT"
LOG="$OUT/gpu_smoke.log"
SUMMARY="$OUT/gpu_smoke_summary.md"
: >"$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if compgen -G ".whl/*.whl" >/dev/null; then
  echo "installing $(ls .whl/*.whl | wc -l) wheel(s) from .whl/ into /tmp/site" | tee -a "$LOG"
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .whl/: using the installed packages" | tee -a "$LOG"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | tee -a "$LOG" || true

NAMES=()
STATUSES=()
TIMES=()

# run_part NAME MAX_SECONDS COMMAND...: run under a time limit, log, record the status.
run_part() {
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  local status rc=0 start=$SECONDS
  if ((left < 20)); then
    echo "=== $name: SKIP (no time left)" | tee -a "$LOG"
    NAMES+=("$name") STATUSES+=("SKIP (no time)") TIMES+=(0)
    return 0
  fi
  local limit=$((cap < left ? cap : left))
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  set -e
  case $rc in
    0) status=PASS ;;
    3) status=SKIP ;;
    124 | 137) status="TIMEOUT (${limit}s)" ;;
    *) status="FAIL (rc $rc)" ;;
  esac
  NAMES+=("$name") STATUSES+=("$status") TIMES+=($((SECONDS - start)))
  echo "=== $name: $status" | tee -a "$LOG"
}

run_part cuda_bf16 60 "$PY" benchmarks/gpu_checks.py env
run_part flash_parity 90 "$PY" benchmarks/gpu_checks.py flash-parity
run_part fit_fsdp 90 "$PY" benchmarks/gpu_checks.py fit --strategy fsdp --precision bf16-mixed
run_part fit_fsdp2 90 "$PY" benchmarks/gpu_checks.py fit --strategy fsdp2 --precision bf16-mixed
run_part step_cost 300 "$PY" benchmarks/step_cost.py --device cuda --precision bf16-mixed \
  --vocab 128256 --hidden 1024 --intermediate 2816 --layers 8 --heads 16 --kv-heads 8 \
  --long 8192 --short 1024 --s2l 2048 --steps 4 --reps 3 --data-batches 256 \
  --mem-len 8192 --mem-chunks 0,4096,1024 --out "$OUT/step_cost_gpu.json"

failed=0
{
  echo "| part | status | seconds |"
  echo "|---|---|---|"
  for i in "${!NAMES[@]}"; do
    echo "| ${NAMES[$i]} | ${STATUSES[$i]} | ${TIMES[$i]} |"
    case ${STATUSES[$i]} in FAIL* | TIMEOUT*) failed=1 ;; esac
  done
} >"$SUMMARY"
echo | tee -a "$LOG"
tee -a "$LOG" <"$SUMMARY"
exit "$failed"

#!/usr/bin/env bash
# GPU smoke of longred_pl on CUDA (written for a single H200), about 8 minutes at most.
# Runs from the repository root:   bash benchmarks/gpu_smoke.sh
# Parts, each under its own time limit:
#   gpu_env, flash_parity, fsdp_fit   pytest -m gpu on tests/gpu/<file> (CUDA + bf16; flash-attn
#                                     vs sdpa incl. s2l skipped ids; LongReD fits under FSDP1
#                                     and FSDP2, unsharded-loss equality, RoPE inv_freq dtype)
#   cp_kernels                        pytest -m gpu tests/integration/test_cp_attention.py: the
#                                     ring attention's CUDA kernels vs sdpa (the ring itself
#                                     needs 2 GPUs)
#   cp_gpu                            python -m benchmarks.cp_memory --device cuda: context
#                                     parallelism over 2 GPUs (SKIP with fewer than 2)
#   step_cost                         python -m benchmarks.step_cost at GPU sizes (last: it gets
#                                     the time left; its JSON is rewritten after each target)
# A pytest part whose tests were all skipped (e.g. no flash_attn) reads SKIP.
# Wheels in .whl/ (if any) are installed into /tmp/site, else the packages must be present.
# Outputs in ${OUT:-benchmarks/results}: gpu_smoke.log (everything printed),
# gpu_smoke_summary.md (the status table), step_cost_gpu.json and cp_memory_gpu.json.
# The script exits nonzero if any part failed or timed out.
set -euo pipefail

OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-470}  # all parts together, leaving time for start-up and copying back
DEADLINE=$((SECONDS + BUDGET_S))
mkdir -p "$OUT"
LOG="$OUT/gpu_smoke.log"
SUMMARY="$OUT/gpu_smoke_summary.md"
PART_LOG=$(mktemp)
trap 'rm -f "$PART_LOG"' EXIT
: >"$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if compgen -G ".whl/*.whl" >/dev/null; then
  echo "installing $(ls .whl/*.whl | wc -l) wheel(s) from .whl/ into /tmp/site" | tee -a "$LOG"
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .whl/: using the installed packages" | tee -a "$LOG"
fi
command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | tee -a "$LOG" || true

NAMES=()
STATUSES=()
TIMES=()

# run_part NAME MAX_SECONDS COMMAND...: run under a time limit, log, record the status.
# Exit 0 is PASS (SKIP for pytest when nothing passed), 3 is SKIP, 124/137 TIMEOUT.
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
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$PART_LOG" | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  set -e
  case $rc in
    0) status=PASS ;;
    3) status=SKIP ;;
    124 | 137) status="TIMEOUT (${limit}s)" ;;
    *) status="FAIL (rc $rc)" ;;
  esac
  if [[ $rc == 0 && $* == *pytest* ]] && ! grep -Eq '[0-9]+ (passed|xfailed)' "$PART_LOG"; then
    status=SKIP
  fi
  NAMES+=("$name") STATUSES+=("$status") TIMES+=($((SECONDS - start)))
  echo "=== $name: $status" | tee -a "$LOG"
}

# -rA: the tests' printed measurements (errors, losses, dtypes) go into the log.
GPU_TESTS=("$PY" -m pytest -m gpu -q -rA)
run_part gpu_env 60 "${GPU_TESTS[@]}" tests/gpu/test_cuda_env.py
run_part flash_parity 90 "${GPU_TESTS[@]}" tests/gpu/test_flash_parity.py
run_part fsdp_fit 150 "${GPU_TESTS[@]}" tests/gpu/test_fsdp_fit.py
run_part cp_kernels 90 "${GPU_TESTS[@]}" tests/integration/test_cp_attention.py
# Context parallelism needs one GPU per rank (NCCL refuses two ranks on one device).
run_part cp_gpu 90 bash -c '
  n=$("$0" -c "import torch; print(torch.cuda.device_count())")
  if ((n < 2)); then echo "SKIP: context parallelism needs 2 GPUs, this machine has $n"; exit 3; fi
  exec "$0" -m benchmarks.cp_memory --device cuda --seq-len 16384 --out "$1/cp_memory_gpu.json"
' "$PY" "$OUT"
run_part step_cost 270 "$PY" -m benchmarks.step_cost --device cuda --precision bf16-mixed \
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

#!/usr/bin/env bash
# GPU checks in one run (at most GPU_CHECK_BUDGET seconds, default 450), one JSON out.
#
#   bash benchmarks/gpu_check.sh OUTDIR [WHEELS_DIR]
#
# For a machine with torch (CUDA), CuPy and numba and no network; faiss and Dask are not
# needed except by the two steps that say so (their JSON then says "skipped"): carry their
# wheels in WHEELS_DIR (benchmarks/gpu_wheels.sh fetches them) to run those too.
#
#   versions   packages, GPU, and what --graph-engine auto picks here
#   equal-50k  the torch engine's exact graph of 50k × 768 rows on the GPU (fp16 GEMMs) against
#              the same code on the CPU and the compiled engine (faiss, Dask): identical?
#   graph-1m   the torch engine's exact and IVF graphs of 1M × 768 synthetic rows generated on
#              the GPU: time, stages, memory, recall of IVF against the exact graph
#   cpu-1m     the compiled CPU engine on the same rows and this machine's cores (faiss, Dask)
#   graph-12m  the torch engine's IVF graph of 12.8M × 768 rows: time, memory, sampled recall
#   mp-12m     D2 message passing on CUDA over the 12.8M-node graph (30% budget)
#   select-4m  `d2scale synth` + `d2scale select --graph-engine torch --device cuda`, 4M rows
#              (Dask)
#
# OUTDIR/gpu_check.json holds every step's JSON (or why it has none); OUTDIR/log.txt the log.
# GPU_CHECK_STEPS: a regex of the steps to run (default all); SKIP_INSTALL=1: d2scale is
# installed already; GPU_CHECK_DEVICE=cpu, GPU_CHECK_ROWS="R0 R1 R2 R3" (the four sizes) and
# GPU_CHECK_DIM: a dry run of the script at a tiny size on a CPU machine. Steps run in the order above; each has a time limit, and a step that
# would start with under 15 s of the budget left is skipped.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUTDIR [WHEELS_DIR]}
WHEELS=${2:-}
mkdir -p "$OUT/steps"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
PY=${PYTHON:-python3}
BENCH="$PY benchmarks/gpu_graph.py"
DATA=${GPU_CHECK_DATA:-/tmp/gpu-check}
BUDGET=${GPU_CHECK_BUDGET:-450}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
read -r R0 R1 R2 R3 <<<"${GPU_CHECK_ROWS:-50000 1000000 12800000 4000000}"
BENCH="$BENCH --device $DEVICE --dim ${GPU_CHECK_DIM:-768}"
rm -rf "$DATA" && mkdir -p "$DATA"

step() {  # step NAME LIMIT_S COMMAND...: stdout → steps/NAME.json, stderr → log; never aborts
  local name=$1 limit=$2
  shift 2
  [[ $name =~ ${GPU_CHECK_STEPS:-.} ]] || return 0
  local left=$((BUDGET - SECONDS))
  if ((left < 15)); then
    echo "=== $name: skipped (time budget spent)" | tee -a "$LOG"
    echo "{\"skipped\": \"the script's time budget ($BUDGET s) was spent\"}" >"$OUT/steps/$name.json"
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "=== $name ($(date +%T), limit ${limit}s)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/steps/$name.json" 2>>"$LOG"
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
}

if [ -z "${SKIP_INSTALL:-}" ]; then
  if [ -n "$WHEELS" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$WHEELS"/*.whl \
      >>"$LOG" 2>&1 || echo "=== wheels: install failed" | tee -a "$LOG"
  fi
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 \
    || echo "=== d2scale: install failed" | tee -a "$LOG"
fi

step versions 60 $BENCH versions
step equal-50k 90 $BENCH equal --rows "$R0"
step graph-1m 150 $BENCH graph --rows "$R1" --exact --save "$DATA/1m"
step cpu-1m 150 $BENCH cpu-engine --data "$DATA/1m"
rm -f "$DATA/1m/x.npy"
step graph-12m 240 $BENCH graph --rows "$R2" --save "$DATA/12m"
step mp-12m 90 $BENCH mp --data "$DATA/12m" --mp-devices "$DEVICE"
step select-4m 240 $BENCH select --rows "$R3" --save "$DATA/select"
$BENCH merge "$OUT"/steps/*.json >"$OUT/gpu_check.json"
echo "=== done $(date +%T) in $SECONDS s: $OUT/gpu_check.json" | tee -a "$LOG"

#!/usr/bin/env bash
# GPU tests and the CuPy and vision checks in one run, for a CUDA machine (NVIDIA driver, nvcc,
# CuPy, torch with CUDA, faiss and Dask). The torch graph engine, message passing at scale and
# a large select: benchmarks/gpu_check.sh.
#
#   bash benchmarks/gpu_tests.sh OUTDIR [WHEELS_DIR]
#
# 1. the GPU tests (CuPy kernels vs the CPU engine, nvcc builds, CuPy graph scan);
# 2. the vision tests with torch on CUDA (--device auto picks the GPU);
# 3. benchmarks/bench_mp_gpu.py (kernels timed and checked bit for bit against the CPU engine);
# 4. `d2scale graph` and `d2scale select` on a synthetic pool, --device cuda against cpu;
# 5. `d2scale vision` train/select/train and prune on digits, CUDA against CPU.
# Everything lands in OUTDIR (log.txt and *.json). WHEELS_DIR: wheels of dependencies missing
# on that machine, installed with --no-index first (a machine without network).
set -uo pipefail
OUT=${1:?usage: gpu_tests.sh OUTDIR [WHEELS_DIR]}
WHEELS=${2:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
export PY=${PYTHON:-python3}
D2="$PY -m d2scale.cli.main"
BUDGET=${GPU_CHECK_BUDGET:-540}
step() {  # step NAME TIMEOUT_S COMMAND...: run with a time limit, log, never abort the script
  local name=$1 limit=$2
  shift 2
  [[ $name =~ ${GPU_CHECK_STEPS:-.} ]] || return 0  # GPU_CHECK_STEPS: a regex of steps to run
  local left=$((BUDGET - SECONDS))  # GPU_CHECK_BUDGET: seconds for the whole script
  if ((left < 15)); then echo "=== $name: skipped (time budget spent)" | tee -a "$LOG"; return 0; fi
  ((limit > left)) && limit=$left
  echo "=== $name ($(date +%T), limit ${limit}s)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
}

if [ -z "${SKIP_INSTALL:-}" ]; then
if [ -n "$WHEELS" ]; then
  step install-wheels 120 $PY -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir "$WHEELS"/*.whl
fi
step install-d2scale 120 $PY -m pip install -q --no-index --no-deps --no-build-isolation -e .
fi
step versions 60 bash -c 'nvidia-smi -L; nvcc --version | tail -1; $PY -c "
import cupy, faiss, numpy, numba, torch
print(\"cupy\", cupy.__version__, \"faiss\", faiss.__version__, \"numpy\", numpy.__version__,
      \"numba\", numba.__version__, \"torch\", torch.__version__, torch.cuda.is_available())"'

step pytest-gpu 150 $PY -m pytest -q -rs -p no:cacheprovider -o addopts="" \
  --import-mode=importlib tests/gpu tests/d2/test_kernels.py tests/graph/test_ivf.py
step bench-mp-gpu 120 bash -c "$PY benchmarks/bench_mp_gpu.py --sizes 100000 1000000 \
  > $OUT/bench_mp_gpu.json"

step vision-cuda 150 bash -c "
  $D2 vision train --dataset digits --device cuda --quiet --out /tmp/v-cuda/full &&
  $D2 vision select --run /tmp/v-cuda/full --method d2 --fraction 0.3 --out /tmp/v-cuda/d2.npy &&
  $D2 vision train --dataset digits --device cuda --quiet --coreset /tmp/v-cuda/d2.npy \
    --out /tmp/v-cuda/d2-0.3 &&
  $D2 vision prune --dataset digits --device cuda --quiet --strategy dp --quoter drop \
    --scorer random --num-inits 2 --final-frac 0.3 --out /tmp/v-cuda/drop"
step pytest-vision 150 $PY -m pytest -q -rs -p no:cacheprovider -o addopts="" \
  --import-mode=importlib -m "not slow" tests/vision

POOL=/tmp/gpu-check-pool
ROWS=${GPU_CHECK_ROWS:-200000}
step synth 60 $D2 synth --out $POOL --rows $ROWS --shards 4 --layout f16-stored
for dev in cuda cpu; do
  step "graph-$dev" 150 $D2 graph --metadata-dir $POOL --out /tmp/g-$dev --device $dev \
    --n-neighbors 10 --quiet
done
step graphs-equal 30 $PY -c "
import json, numpy as np
for d in ('cuda', 'cpu'):
    m = json.load(open(f'/tmp/g-{d}/meta.json'))
    print(d, {k: m[k] for k in m if k in ('timings_s', 'timings', 'device', 'nprobe', 'nlist', 'peak_rss_bytes')})
a, b = (np.load(f'/tmp/g-{d}/neighbors.npy') for d in ('cuda', 'cpu'))
print('graph cuda == cpu:', np.array_equal(a, b), 'rows differing:', int((a != b).any(1).sum()))"
step select-cuda 90 $D2 select --metadata-dir $POOL --fraction 0.3 --device cuda \
  --graph /tmp/g-cpu --n-neighbors 10 --out /tmp/s-cuda --quiet
step select-cpu 90 $D2 select --metadata-dir $POOL --fraction 0.3 --device cpu \
  --graph /tmp/g-cpu --n-neighbors 10 --out /tmp/s-cpu --quiet
step select-equal 30 bash -c "cmp /tmp/s-cuda/uids.npy /tmp/s-cpu/uids.npy && echo uids equal;
  $PY -c \"import json; [print(d, json.load(open(f'/tmp/s-{d}/run.json'))[k]) for d in ('cuda','cpu') for k in ('method', 'timings_s')]\""

step vision-cpu 120 $D2 vision train --dataset digits --device cpu --quiet --out /tmp/v-cpu/full
step vision-report 30 $PY -c "
import json, os
for run in ('cuda/full', 'cpu/full', 'cuda/d2-0.3', 'cuda/drop'):
    p = f'/tmp/v-{run}/metrics.json'
    if os.path.exists(p):
        m = json.load(open(p))
        print(run, 'test', m['test_accuracy'], 'worst', m['worst_class_accuracy'],
              'seconds', m.get('seconds') or m.get('timings'))"
cp /tmp/v-cuda/full/metrics.json "$OUT/vision-cuda-full-metrics.json" 2>/dev/null
echo "=== done $(date +%T)" | tee -a "$LOG"

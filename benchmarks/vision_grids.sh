#!/usr/bin/env bash
# One `d2scale vision experiment` grid with its seeds in parallel processes, then merged.
#
#   bash benchmarks/vision_grids.sh OUTDIR DATASET DEVICE THREADS [experiment flags...]
#   e.g. bash benchmarks/vision_grids.sh runs/mnist5k-drop mnist5k cuda 1 --protocol drop --cdbw off,on
#
# Seeds come from SEEDS (default 0,1,2); each runs as `vision experiment --seeds S` into
# OUTDIR/parts/S (THREADS torch CPU threads each), then the seed folders and query caches move
# into OUTDIR and one `vision experiment --seeds 0,1,2` over OUTDIR finds every cell finished
# and writes results.json, results.md and accuracy.png. The same as running
# `d2scale vision experiment --dataset DATASET --seeds 0,1,2 [flags] --out OUTDIR`, only faster
# on a machine with cores to spare; rerunning resumes unfinished cells.
set -euo pipefail
OUT=${1:?usage: vision_grids.sh OUTDIR DATASET DEVICE THREADS [flags...]}
DATASET=${2:?dataset}
DEVICE=${3:?device}
THREADS=${4:?threads}
shift 4
PY=${PY:-python3}
SEEDS=${SEEDS:-0,1,2}
mkdir -p "$OUT/parts"
pids=()
for s in ${SEEDS//,/ }; do
  mkdir -p "$OUT/parts/$s"
  if [ -d "$OUT/seed-$s" ]; then  # resume: finished cells and query models are reused
    rm -rf "$OUT/parts/$s/seed-$s" && mv "$OUT/seed-$s" "$OUT/parts/$s/"
    [ -d "$OUT/query-cache" ] && cp -r "$OUT/query-cache" "$OUT/parts/$s/"
  fi
  $PY -m d2scale.cli.main vision experiment --dataset "$DATASET" --device "$DEVICE" \
    --threads "$THREADS" --quiet --seeds "$s" "$@" --out "$OUT/parts/$s" \
    >"$OUT/parts/$s.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for s in ${SEEDS//,/ }; do
  part="$OUT/parts/$s"
  rm -rf "$OUT/seed-$s" && mv "$part/seed-$s" "$OUT/"
  if [ -d "$part/query-cache" ]; then
    mkdir -p "$OUT/query-cache" && cp -r "$part/query-cache/." "$OUT/query-cache/"
  fi
done
$PY -m d2scale.cli.main vision experiment --dataset "$DATASET" --device "$DEVICE" \
  --threads "$THREADS" --quiet --seeds "$SEEDS" "$@" --out "$OUT"
rm -rf "$OUT/parts"

#!/usr/bin/env bash
# Fetch the wheels that benchmarks/gpu_check.sh needs on a GPU machine whose image has torch,
# CuPy and numba but not faiss or Dask (the compiled engine's step and the select step):
#
#   bash benchmarks/gpu_wheels.sh [DIR]     # default .whl (keep it out of git:
#                                           #   echo /.whl/ >> .git/info/exclude)
#   bash benchmarks/gpu_check.sh OUT DIR    # there: installs DIR/*.whl first
#
# Versions are this environment's (PYTHON, default python3, with d2scale installed); wheels
# for CPython 3.12 on manylinux x86-64, no dependencies beyond these (the image has the rest).
set -euo pipefail
DIR=${1:-.whl}
PY=${PYTHON:-python3}
PINS=$($PY -c "
from importlib.metadata import version
names = ['faiss-cpu', 'dask', 'distributed', 'partd', 'locket', 'zict', 'tblib', 'tornado']
print(' '.join(f'{n}=={version(n)}' for n in names))")
mkdir -p "$DIR"
# shellcheck disable=SC2086  # PINS is a list of requirements
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DIR" $PINS
ls "$DIR"

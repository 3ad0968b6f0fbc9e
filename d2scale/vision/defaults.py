"""Defaults of the vision commands that the command line shows and the library uses: written
once, here, without importing torch (the CLI reads them while building ``--help``)."""

from __future__ import annotations

# DRoP (``vision prune``): quotas from validation recall, the method's point; without them
# ``prune`` would run no DRoP at all.
DEFAULT_QUOTER = "drop"
# Laplace-smoothed recall (hits + 1) / (n + 2): with a few dozen validation samples per class
# an easy class measures recall 1.0, and the published rule then gives it no samples (DRoP)
# or no loss weight (CDB-W). On digits at 30% kept that left random+DRoP at 49% average and
# 0% worst class; smoothed, 97% and 91% (README, DRoP results).
DEFAULT_RECALL_SMOOTHING = "laplace"
# torch CPU threads of the vision commands. The models here are small per sample (digits:
# a 24k-parameter CNN), so more threads add synchronisation, not speed: on the 2-core dev
# machine torch's default (2) trained digits 5x slower than one thread under load. More
# threads change float summation order, hence the trained model; metrics.json records it.
DEFAULT_THREADS = 1
# SGD steps of a coreset run in the CIFAR recipes (the D2 seed's), named in --iterations' help
CIFAR_ITERATIONS = 40_000

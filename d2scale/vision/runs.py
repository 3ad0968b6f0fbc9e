"""Run directories: what ``d2scale vision train`` writes and ``select`` / ``prune`` read.

A run directory holds ``metrics.json`` (written last: its presence marks a finished run),
``checkpoint.pt`` (the last epoch), and for full-data runs ``dynamics.npz`` (one float array
per SPEC §3 score plus ``targets`` and ``presentations``, one entry per training sample) and
``features.npy`` (float32, N × d penultimate features).
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.io import save_json, save_npy, save_npz
from d2scale.vision.dynamics import SCORES


def resolve_device(device: str):
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise D2ScaleError(f"--device must be auto, cpu or cuda; got {device!r}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise D2ScaleError("--device cuda was asked for but torch sees no CUDA GPU.")
    return torch.device(device)


def save_run(out: str, result, extra: dict | None = None) -> dict:
    """Write ``result`` (a :class:`~d2scale.vision.train.TrainResult`) into ``out``."""
    if result.scores is not None:
        save_npz(os.path.join(out, "dynamics.npz"), **result.scores)
    if result.features is not None:
        save_npy(os.path.join(out, "features.npy"), result.features)
    metrics = {**result.metrics, **(extra or {})}
    save_json(os.path.join(out, "metrics.json"), metrics)
    return metrics


def is_finished(out: str) -> bool:
    return os.path.isfile(os.path.join(out, "metrics.json"))


def read_metrics(out: str) -> dict:
    """``out/metrics.json`` of a finished run."""
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def load_run(run_dir: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(scores, features) of a full-data run directory, checked for consistency."""
    dyn_path = os.path.join(run_dir, "dynamics.npz")
    feat_path = os.path.join(run_dir, "features.npy")
    for path in (dyn_path, feat_path):
        if not os.path.isfile(path):
            raise D2ScaleError(
                f"{path} is missing: --run must be a full-data run directory written by "
                "`d2scale vision train` without --coreset."
            )
    try:
        with np.load(dyn_path, allow_pickle=False) as z:
            scores = {k: z[k] for k in z.files}
        features = np.load(feat_path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise D2ScaleError(f"cannot read the run in {run_dir} (damaged file?): {e}") from None
    missing = [k for k in (*SCORES, "targets") if k not in scores]
    if missing:
        raise D2ScaleError(f"{dyn_path} lacks the score {missing[0]!r}.")
    n = len(scores["targets"]) if scores["targets"].ndim == 1 else -1
    for k in (*SCORES, "targets"):
        if scores[k].shape != (max(n, 0),):
            raise D2ScaleError(
                f"{dyn_path}: {k!r} has shape {scores[k].shape}; every score and the targets "
                "must be 1-D with one entry per training sample."
            )
    if features.ndim != 2 or features.shape[0] != n:
        raise D2ScaleError(f"{feat_path} must hold {n} feature rows; found {features.shape}.")
    return scores, features


def load_indices(path: str, n: int) -> np.ndarray:
    """A coreset file: a 1-D integer .npy of distinct training-sample ids in [0, n)."""
    if not os.path.isfile(path):
        raise D2ScaleError(f"coreset file {path} does not exist.")
    try:
        idx = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise D2ScaleError(f"cannot read coreset file {path}: {e}") from None
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise D2ScaleError(f"{path} must hold a 1-D integer array; found {idx.dtype} {idx.shape}.")
    if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
        raise D2ScaleError(f"{path} must hold sample ids in [0, {n}) (and at least one).")
    if len(np.unique(idx)) != len(idx):
        raise D2ScaleError(f"{path} repeats sample ids; a coreset lists each sample once.")
    return np.sort(idx.astype(np.int64))

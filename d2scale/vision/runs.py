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
    """The ``torch.device`` of ``device`` (``backends.resolve_device`` with torch's view)."""
    import torch

    from d2scale.backends import resolve_device as resolve

    return torch.device(resolve(device, runtime="torch"))


def resolve_seed_gpu(gpuid: int, flag: str):
    """The seeds' GPU request (DRoP's ``--use_gpu``, "use the GPU if available"; D2's
    ``--gpuid N``): ``cuda:N`` where torch sees a GPU; without one, the CPU and the warning
    the caller prints and records (an explicit ``--device cuda`` is an error instead)."""
    import torch

    if not torch.cuda.is_available():
        return torch.device(
            "cpu"
        ), f"{flag} asked for a GPU, but torch sees none: running on the CPU"
    if gpuid >= torch.cuda.device_count():
        raise D2ScaleError(f"{flag}: torch sees {torch.cuda.device_count()} GPU(s), ids from 0.")
    return torch.device(f"cuda:{gpuid}"), None


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


RUN_FILES = ("metrics.json", "checkpoint.pt", "dynamics.npz", "features.npy")


def check_not_a_run_file(paths: list[str], run_dir: str) -> None:
    """Refuse output ``paths`` of which one would replace a file of run ``run_dir``."""
    own = {os.path.realpath(os.path.join(run_dir, name)) for name in RUN_FILES}
    for path in paths:
        if os.path.realpath(path) in own:
            raise D2ScaleError(
                f"--out would write {path}, a file of the run in {run_dir}; choose another --out."
            )


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
    _check_scores(scores, features, dyn_path, feat_path)
    return scores, features


def _check_scores(scores: dict, features: np.ndarray, score_path: str, feat_path: str) -> None:
    missing = [k for k in (*SCORES, "targets") if k not in scores]
    if missing:
        raise D2ScaleError(f"{score_path} lacks the score {missing[0]!r}.")
    n = len(scores["targets"]) if scores["targets"].ndim == 1 else -1
    for k in (*SCORES, "targets"):
        if scores[k].shape != (max(n, 0),):
            raise D2ScaleError(
                f"{score_path}: {k!r} has shape {scores[k].shape}; every score and the targets "
                "must be 1-D with one entry per training sample."
            )
    if features.ndim != 2 or features.shape[0] != n:
        raise D2ScaleError(f"{feat_path} must hold {n} feature rows; found {features.shape}.")


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


# the D2 seed's score and feature files (generate_importance_score.py), in a run directory
SEED_SCORE_FILE = "data-score-{task}.pickle"
SEED_FEATURE_FILE = "train-features-{task}.npy"
_NUMPY_GLOBALS = {  # all an unpickled dict of numpy arrays may refer to
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def write_seed_files(run_dir: str, out_dir: str, task: str, features: bool) -> list[str]:
    """Write a full-data run's scores as the seed's ``data-score-TASK.pickle`` (a dict of
    numpy arrays, ``targets`` among them) and, with ``features``, ``train-features-TASK.npy``
    into ``out_dir``; the paths written."""
    import pickle

    from d2scale.io import atomic_path

    scores, feats = load_run(run_dir)
    paths = [os.path.join(out_dir, SEED_SCORE_FILE.format(task=task))]
    with atomic_path(paths[0]) as tmp, open(tmp, "wb") as f:
        pickle.dump({k: np.asarray(v) for k, v in scores.items()}, f, protocol=4)
    if features:
        paths.append(os.path.join(out_dir, SEED_FEATURE_FILE.format(task=task)))
        save_npy(paths[1], feats)
    return paths


def load_seed_files(score_path: str, feature_path: str) -> tuple[dict, np.ndarray]:
    """(scores, features) from the seed's score pickle and feature .npy, checked like
    :func:`load_run`; the pickle may hold numpy arrays only (nothing else is unpickled)."""
    import pickle

    class NumpyOnly(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) not in _NUMPY_GLOBALS:
                raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array part")
            return super().find_class(module, name)

    for path, flag in ((score_path, "--data-score-path"), (feature_path, "--feature-path")):
        if not path or not os.path.isfile(path):
            raise D2ScaleError(f"{flag} {path} does not exist (`d2scale vision scores` writes it).")
    try:
        with open(score_path, "rb") as f:
            scores = {k: np.asarray(v) for k, v in NumpyOnly(f).load().items()}
        features = np.load(feature_path, allow_pickle=False)
    except Exception as e:  # a foreign or truncated file: any unpickling error
        raise D2ScaleError(f"cannot read {score_path} / {feature_path}: {e}") from None
    _check_scores(scores, features, score_path, feature_path)
    return scores, features

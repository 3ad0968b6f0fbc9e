"""Outputs of ``select``, committed as one set: DataComp subset files (``uids*.npy``),
``ranking.parquet`` and ``run.json``.

Every file is first written into ``OUT/work/commit-<id>/``. Only when all are there does the
commit start: ``run.json`` of the previous run is removed (the directory no longer looks
complete), subset files of earlier runs that this run does not write are removed, the new
files are moved into place, and ``run.json`` comes last. So ``run.json`` present means the
set beside it is complete and from one run; a run killed at any point leaves no
``run.json`` (or the previous complete set), and the next run cleans up what was left.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from d2scale import io
from d2scale.params import fraction_label
from d2scale.pool.uids import canonical_text, subset_array
from d2scale.stages import pause_point
from d2scale.types import Ranking

RUN_JSON = "run.json"
RANKING = "ranking.parquet"


ALL = "all"  # the label of "every row the filter passes" (no fraction given)


def subset_label(fraction: float | None) -> str:
    """The key of ``counts.selected`` in ``run.json``: the fraction, or ``"all"``."""
    return ALL if fraction is None else fraction_label(fraction)


def subset_file_names(budgets: dict[float | None, int]) -> dict[float | None, str]:
    """``uids.npy`` for one fraction (or for every passing row), ``uids-<fraction>.npy`` for
    several."""
    if len(budgets) == 1:
        return {next(iter(budgets)): "uids.npy"}
    return {f: f"uids-{fraction_label(f)}.npy" for f in budgets}


def is_output_file(name: str) -> bool:
    """Files of a committed output set (what a new commit replaces)."""
    return name in (RUN_JSON, RANKING) or (name.startswith("uids") and name.endswith(".npy"))


def ranking_table(uids: np.ndarray, scores: np.ndarray, ranking: Ranking) -> pa.Table:
    """Every row in pool order: uid, score, the method's columns, rank (null: not picked)."""
    rank = np.full(len(uids), -1, dtype=np.int64)
    rank[ranking.order] = np.arange(ranking.order.shape[0], dtype=np.int64)
    columns = {
        "uid": uids if isinstance(uids, (pa.Array, pa.ChunkedArray)) else canonical_text(uids),
        "score": arrow_array(np.asarray(scores, np.float64)),
        **{name: arrow_array(np.asarray(v)) for name, v in ranking.columns.items()},
        "rank": arrow_array(rank, mask=rank < 0),
    }
    return pa.table(columns)


def arrow_array(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """``pa.array(values, mask=mask)``; a numeric array is wrapped from its buffer
    (``pa.array`` imports pandas: 0.4 s of a small select's start-up)."""
    if values.dtype.kind not in "iuf" or values.ndim != 1:
        return pa.array(values, mask=mask)
    values = np.ascontiguousarray(values)
    nulls = 0 if mask is None else int(mask.sum())
    bitmap = pa.py_buffer(np.packbits(~mask, bitorder="little")) if nulls else None
    kind = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(kind, len(values), [bitmap, pa.py_buffer(values)], nulls)


def write_outputs(
    out: str,
    uids: np.ndarray,
    scores: np.ndarray,
    ranking: Ranking,
    budgets: dict[float | None, int],
    record: dict,
    started: float,
    uid_text: pa.ChunkedArray | None = None,
) -> dict:
    """Stage every output of the run, then commit the set into ``out``; return ``record``
    completed with counts, outputs and the total time (as written to ``run.json``)."""
    staging = io.join(out, "work", f"commit-{uuid.uuid4().hex[:12]}")
    _remove_leftovers(out)
    io.makedirs(staging)
    names = subset_file_names(budgets)
    for fraction, name in names.items():
        picked = ranking.order[: budgets[fraction]]
        io.save_npy(io.join(staging, name), subset_array(uids[picked]))
    table = ranking_table(uid_text if uid_text is not None else uids, scores, ranking)
    with io.atomic_path(io.join(staging, RANKING)) as tmp:
        pq.write_table(table, tmp)
    files = [*names.values(), RANKING]
    record = {
        **record,
        "counts": {
            **record.get("counts", {}),
            "selected": {subset_label(f): b for f, b in budgets.items()},
        },
        "outputs": files,
    }
    record.setdefault("timings_s", {})["total"] = round(time.time() - started, 3)
    io.save_json(io.join(staging, RUN_JSON), record)
    _commit(out, staging, files)
    return record


def _commit(out: str, staging: str, files: list[str]) -> None:
    pause_point("commit")
    io.remove(io.join(out, RUN_JSON))
    for name in io.listdir(out):
        if is_output_file(name) and name not in files:
            io.remove(io.join(out, name))
    for name in files:
        io.move(io.join(staging, name), io.join(out, name))
        pause_point(f"commit-{name}")
    io.move(io.join(staging, RUN_JSON), io.join(out, RUN_JSON))
    io.remove(staging, recursive=True)


def _remove_leftovers(out: str) -> None:
    """Staging directories and temporary files that killed runs left behind."""
    work = io.join(out, "work")
    for name in io.listdir(work):
        if name.startswith("commit-"):
            io.remove(io.join(work, name), recursive=True)
    for path in io.find(out):
        name = path.rsplit("/", 1)[-1]
        if name.startswith(".") and name.endswith(".tmp"):
            io.remove(path)

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


def subset_file_names(budgets: dict[float, int]) -> dict[float, str]:
    """``uids.npy`` for one fraction, ``uids-<fraction>.npy`` for several."""
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
        "score": pa.array(scores, pa.float64()),
        **{name: pa.array(np.asarray(v)) for name, v in ranking.columns.items()},
        "rank": pa.array(rank, pa.int64(), mask=rank < 0),
    }
    return pa.table(columns)


def write_outputs(
    out: str,
    uids: np.ndarray,
    scores: np.ndarray,
    ranking: Ranking,
    budgets: dict[float, int],
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
            "selected": {fraction_label(f): b for f, b in budgets.items()},
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

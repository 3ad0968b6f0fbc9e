"""A graph build stopped at any sub-step resumes there: the trained model, every assigned
partition, every search chunk and every re-ranked block is a checkpoint, a rerun redoes
only the unfinished ones, and the graph is bit-identical to an uninterrupted build."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from d2scale.graph import build_knn_graph, listrows, probed, shards
from d2scale.types import ArrayBlocks

sys.path.insert(0, os.path.dirname(__file__))
from test_store import BLOCK, X  # noqa: E402  (the same 5,000 × 48 pool, 10 partitions)

# These tests count the tasks a build runs: each build gets its own cluster, so that no task
# of a stopped build still runs on a shared one while the next is counted.
pytestmark = pytest.mark.own_cluster

N_PARTS = X.shape[0] // BLOCK
CALLS: dict[str, int] = {"assign": 0, "search": 0, "rerank": 0}
ORIGINAL = {"assign": shards.assign_part, "list": shards.search_lists,
            "row": probed.search_rows, "rerank": shards.rerank_streamed,
            "rerank_lists": listrows.rerank_block}  # fmt: skip


# Task wrappers, referenced by module name so that Dask workers in this process find them.
def counting_assign(*args):
    CALLS["assign"] += 1
    return ORIGINAL["assign"](*args)


def counting_search_lists(*args):
    CALLS["search"] += 1
    return ORIGINAL["list"](*args)


def counting_search_rows(*args):
    CALLS["search"] += 1
    return ORIGINAL["row"](*args)


def counting_rerank(*args):
    CALLS["rerank"] += 1
    return ORIGINAL["rerank"](*args)


def counting_rerank_lists(*args):
    CALLS["rerank"] += 1
    return ORIGINAL["rerank_lists"](*args)


class Stop(Exception):
    """Raised by the progress callback: the build stops at a sub-step boundary."""


def stop_at(message: str):
    def progress(msg: str) -> None:
        if msg == message:
            raise Stop(message)

    return progress


def build(gdir=None, progress=None):
    return build_knn_graph(ArrayBlocks(X, BLOCK), n_neighbors=6, index="ivf", workdir=gdir,
                           progress=progress)  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted():
    return build()


@pytest.fixture
def counted(monkeypatch):
    monkeypatch.setattr(shards, "assign_part", counting_assign)
    monkeypatch.setattr(shards, "search_lists", counting_search_lists)
    monkeypatch.setattr(probed, "search_rows", counting_search_rows)
    monkeypatch.setattr(shards, "rerank_streamed", counting_rerank)
    monkeypatch.setattr(listrows, "rerank_block", counting_rerank_lists)
    CALLS.update(assign=0, search=0, rerank=0)
    return CALLS


def plan_of(gdir: str) -> dict:
    with open(os.path.join(gdir, "manifest.json")) as f:
        return json.load(f)["plan"]


def same_graph(got, ref) -> None:
    np.testing.assert_array_equal(got[0].neighbors, ref[0].neighbors)
    np.testing.assert_array_equal(got[0].distances, ref[0].distances)
    for key in ("nprobe", "candidates", "recall", "probing", "nlist", "pca_dim"):
        assert got[1][key] == ref[1][key], key


def test_stopped_after_training_keeps_the_model(tmp_path, uninterrupted):
    gdir = str(tmp_path / "g")
    with pytest.raises(Stop):
        build(gdir, stop_at("knn graph: assign"))
    got = build(gdir)
    assert "train" not in got[1]["timings"] and "tune" in got[1]["timings"]
    same_graph(got, uninterrupted)


def test_stopped_during_assignment_redoes_only_the_rest(tmp_path, uninterrupted, counted):
    gdir = str(tmp_path / "g")
    with pytest.raises(Stop):  # said before the 4th result is stored: 3 are saved
        build(gdir, stop_at(f"knn graph: assign: 4/{N_PARTS} partitions"))
    counted.update(assign=0)
    got = build(gdir)
    assert counted["assign"] == N_PARTS - 3
    assert "train" not in got[1]["timings"] and "tune" in got[1]["timings"]
    same_graph(got, uninterrupted)


def test_stopped_during_search_and_rerank_redoes_only_the_rest(tmp_path, uninterrupted, counted):
    gdir = str(tmp_path / "g")
    build(gdir)
    plan = plan_of(gdir)
    chunks, blocks = sum(len(c) for c in plan["chunks"]), len(plan["rerank_blocks"])
    assert chunks >= 2 and blocks >= 2
    shutil.rmtree(gdir)
    with pytest.raises(Stop):
        build(gdir, stop_at(f"knn graph: search shard 1/1: 2/{chunks} chunks"))
    counted.update(assign=0, search=0)
    with pytest.raises(Stop):
        build(gdir, stop_at(f"knn graph: rerank: 2/{blocks} blocks"))
    assert counted["assign"] == 0 and counted["search"] == chunks - 1
    counted.update(search=0, rerank=0)
    got = build(gdir)
    assert counted["search"] == 0 and counted["rerank"] == blocks - 1
    assert {"train", "tune"}.isdisjoint(got[1]["timings"])
    same_graph(got, uninterrupted)


def test_parts_of_another_build_or_truncated_are_recomputed(tmp_path, uninterrupted, counted):
    gdir, other = str(tmp_path / "g"), str(tmp_path / "other")
    build(gdir)
    build_knn_graph(ArrayBlocks(X, BLOCK), n_neighbors=6, index="ivf", seed=1, workdir=other)
    parts = os.path.join(gdir, "parts")
    shutil.copy(os.path.join(other, "parts", "assign-00003.npz"), parts)  # another key
    with open(os.path.join(parts, "assign-00005.npz"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 2)
    with open(os.path.join(parts, "rerank-00000.npz"), "r+b") as f:  # a flipped byte
        f.seek(os.path.getsize(f.name) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    counted.update(assign=0, search=0, rerank=0)
    got = build(gdir)
    assert counted == {"assign": 2, "search": 0, "rerank": 1}
    same_graph(got, uninterrupted)


def test_a_saved_chunk_answering_other_queries_is_recomputed(tmp_path, uninterrupted, counted):
    """A chunk whose queries are not the rows of its plan items (same shape, valid ids:
    e.g. saved under another plan) is searched again."""
    gdir = str(tmp_path / "g")
    build(gdir)
    path = os.path.join(gdir, "parts", "chunk-00001.npz")
    with np.load(path) as z:
        arrays = {key: z[key] for key in z.files}
    arrays["q"] = arrays["q"][::-1].copy()  # the same ids, another order
    np.savez(path, **arrays)
    counted.update(assign=0, search=0, rerank=0)
    got = build(gdir)
    assert counted["assign"] == 0 and counted["search"] == 1
    same_graph(got, uninterrupted)


KILLED = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_store import BLOCK, X
from d2scale.graph import build_knn_graph
from d2scale.types import ArrayBlocks

def progress(msg):
    if msg == {point!r}:
        os.kill(os.getpid(), signal.SIGKILL)

build_knn_graph(ArrayBlocks(X, BLOCK), n_neighbors=6, index="ivf", workdir={gdir!r},
                progress=progress)
"""


def killed_at(point: str, gdir: str) -> None:
    """A build in a subprocess that SIGKILLs itself when it says ``point``."""
    code = KILLED.format(tests=os.path.dirname(__file__), point=point, gdir=gdir)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def test_sigkill_during_assignment_then_rerun(tmp_path, uninterrupted, counted):
    gdir = str(tmp_path / "g")
    killed_at(f"knn graph: assign: 6/{N_PARTS} partitions", gdir)
    assert not os.path.exists(os.path.join(gdir, "neighbors.npy"))
    got = build(gdir)
    assert counted["assign"] == N_PARTS - 5 and "train" not in got[1]["timings"]
    same_graph(got, uninterrupted)


SELECT_KILLED = """
import os, signal
from d2scale.params import SelectParams
from d2scale.select.pipeline import select
from d2scale.progress import Progress

class KillAt(Progress):
    def say(self, message, scope=None):
        if message == {point!r}:
            os.kill(os.getpid(), signal.SIGKILL)
        super().say(message, scope)

select(SelectParams(metadata_dir={pool!r}, out={out!r}, index="ivf", workers=2),
       KillAt(quiet=True))
"""


def select_ivf(pool, out) -> dict:
    from d2scale.params import SelectParams
    from d2scale.progress import Progress
    from d2scale.select.pipeline import select

    params = SelectParams(metadata_dir=str(pool), out=str(out), index="ivf", workers=2)
    return select(params, Progress(quiet=True))


@pytest.mark.slow
def test_select_sigkilled_inside_its_graph_stage_reruns_from_there(small_pool, tmp_path):
    """SIGKILL inside the graph stage (two of the pool's four shards assigned), then a rerun:
    the same uids as a clean run, without training again or assigning those shards again."""
    clean = select_ivf(small_pool, tmp_path / "clean")
    out = tmp_path / "killed"
    code = SELECT_KILLED.format(point="knn graph: assign: 3/4 partitions", pool=str(small_pool),
                                out=str(out))  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (out / "run.json").exists()
    record = select_ivf(small_pool, out)
    assert np.array_equal(np.load(out / "uids.npy"), np.load(tmp_path / "clean" / "uids.npy"))
    assert "train" in clean["graph"]["timings"] and "train" not in record["graph"]["timings"]
    assert not record["stages"]["graph"]["reused"]

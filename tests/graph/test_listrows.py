"""The re-ranking from the rows written in list order: the same rows (float16 pools kept as
halves and norms), the same distances as streaming the pool, bit for bit; chosen where
streaming would read the pool many times, refused with a recorded warning where the disk
cannot hold the rows; every written partition is a checkpoint."""

import numpy as np
import pytest

from d2scale.graph import build, build_knn_graph, listrows, shards
from d2scale.pool.sources import PoolEmbeddings, feature_keys, open_pool
from d2scale.pool.synth import write_pool
from d2scale.types import ArrayBlocks


@pytest.fixture(scope="module")
def f16_pool(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pool"))
    write_pool(path, rows=3000, shards=3, seed=7, layout="f16-stored")
    return PoolEmbeddings(open_pool(path), feature_keys("l14", "image_text"))


def array_blocks() -> ArrayBlocks:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((900, 40)).astype(np.float32)
    x[700] = x[5]  # an exact tie: the lower id first
    return ArrayBlocks(x, 200)


def write_all(blocks, directory: str, q_all: np.ndarray):
    offsets = np.concatenate([[0], np.cumsum(blocks.sizes)]).astype(np.int64)
    order, first = listrows.file_order(q_all, offsets)
    for p in range(len(blocks.sizes)):
        local = order[first[p] : first[p + 1]] - offsets[p]
        assert listrows.write_part(blocks, p, local, directory) == local.size
        assert listrows.part_done(directory, p, local.size, blocks)
    pos = np.full(offsets[-1], -1, np.int64)
    pos[order] = np.arange(order.size)
    return offsets, first, pos


def test_half_rows_decode_to_the_rows_of_the_source(f16_pool):
    assert f16_pool.half_members() == [768, 768]
    local = np.sort(np.random.default_rng(0).choice(1000, 250, replace=False))
    want = np.concatenate([x for _, _, x in f16_pool.iter_rows(1, local, 64)])
    from d2scale.pool.halfprec import scaled_halves

    got = np.empty_like(want)
    for a, b, h, norms in f16_pool.iter_halves(1, local, 64):
        scaled_halves(h[:, :768], np.ascontiguousarray(norms[:, 0]), got[a:b, :768])
        scaled_halves(h[:, 768:], np.ascontiguousarray(norms[:, 1]), got[a:b, 768:])
    assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes()


@pytest.mark.parametrize("source", ["array", "f16"])
def test_rerank_from_list_rows_equals_streaming_the_pool(tmp_path, f16_pool, source):
    blocks = array_blocks() if source == "array" else f16_pool
    n = sum(blocks.sizes)
    rng = np.random.default_rng(1)
    q_all = rng.permutation(n)[: n - 50]  # some rows are not distinct: never read
    offsets, first, pos = write_all(blocks, str(tmp_path), q_all)
    assert (listrows.half_members(blocks) is None) == (source == "array")
    q = np.sort(q_all[100:260])
    cand = rng.choice(q_all, (q.size, 9))
    cand[rng.random(cand.shape) < 0.1] = -1
    got = listrows.rerank_block(str(tmp_path), blocks, first, pos, q, cand, 4)
    ref = shards.rerank_streamed(blocks, offsets, q, cand, 4)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g, r)  # bit for bit


def test_a_build_that_would_read_the_pool_often_writes_the_rows_once(
    tmp_path, monkeypatch, f16_pool
):
    said: list[str] = []
    monkeypatch.setattr(build, "RERANK_MIN_ROWS", 256)  # blocks of 256 rows at this limit
    free, _ = build_knn_graph(f16_pool, n_neighbors=6, index="ivf")
    tight, info = build_knn_graph(f16_pool, n_neighbors=6, index="ivf", memory_limit=3_000_000,
                                  workdir=str(tmp_path), progress=said.append)  # fmt: skip
    assert info["rerank_blocks"] >= build.LISTS_MIN_READS and info["rerank_rows_from"] == "lists"
    assert 0 < info["memory_held_before"] <= info["peak_rss_bytes"]
    assert any("rows in list order" in m for m in said)
    np.testing.assert_array_equal(tight.neighbors, free.neighbors)
    np.testing.assert_array_equal(tight.distances, free.distances)
    assert not list((tmp_path / "parts").glob("list*"))  # deleted once the graph is written


def test_a_deflated_pool_is_read_in_list_order_sooner(tmp_path, monkeypatch, f16_pool):
    path = str(tmp_path / "deflated")
    write_pool(path, rows=3000, shards=3, seed=7, layout="f16-compressed")
    deflated = PoolEmbeddings(open_pool(path), feature_keys("l14", "image_text"))
    assert deflated.costly_reads and not f16_pool.costly_reads
    assert not getattr(array_blocks(), "costly_reads", False)
    monkeypatch.setattr(build, "RERANK_MIN_ROWS", 256)
    monkeypatch.setattr(build, "LISTS_MIN_READS", 10**6)  # cheap reads would be streamed
    _, info = build_knn_graph(deflated, n_neighbors=6, index="ivf", memory_limit=3_000_000,
                              workdir=str(tmp_path / "work"))  # fmt: skip
    assert info["rerank_blocks"] >= build.LISTS_MIN_READS_COSTLY
    assert info["rerank_rows_from"] == "lists"


def test_without_the_disk_for_them_the_pool_is_streamed_and_that_is_said(monkeypatch, f16_pool):
    said: list[str] = []
    monkeypatch.setattr(build, "RERANK_MIN_ROWS", 256)
    monkeypatch.setattr(listrows, "row_bytes", lambda blocks: 2**50)
    _, info = build_knn_graph(f16_pool, n_neighbors=6, index="ivf", memory_limit=3_000_000,
                              progress=said.append)  # fmt: skip
    assert info["rerank_rows_from"] == "pool" and "GiB of disk" in info["rerank_rows_why"]
    warned = [m for m in said if m.startswith("knn graph: warning: the re-ranking reads")]
    assert len(warned) == 1 and "GiB free" in warned[0]


WRITTEN: list[int] = []


def counting_write(blocks, part, local, directory):
    WRITTEN.append(part)
    return ORIGINAL_WRITE(blocks, part, local, directory)


ORIGINAL_WRITE = listrows.write_part


class Stop(Exception):
    pass


@pytest.mark.own_cluster
def test_a_stopped_write_keeps_the_written_partitions(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((1600, 6)) @ rng.standard_normal((6, 48))  # PCA applies
    x = (z + 0.1 * rng.standard_normal((1600, 48))).astype(np.float32)
    kw = {"n_neighbors": 5, "index": "ivf", "memory_limit": 600_000, "workdir": str(tmp_path)}
    monkeypatch.setattr(build, "RERANK_MIN_ROWS", 64)
    monkeypatch.setattr(listrows, "write_part", counting_write)
    parts = len(ArrayBlocks(x, 200).sizes)

    def stop(msg: str) -> None:
        if msg == f"knn graph: rerank: rows in list order: 4/{parts} partitions":
            raise Stop

    with pytest.raises(Stop):
        build_knn_graph(ArrayBlocks(x, 200), progress=stop, **kw)
    assert len(list(tmp_path.glob("parts/listrows-*.npy"))) >= 3
    WRITTEN.clear()
    again, info = build_knn_graph(ArrayBlocks(x, 200), **kw)
    assert info["rerank_rows_from"] == "lists" and len(WRITTEN) <= parts - 3
    ref, _ = build_knn_graph(ArrayBlocks(x, 200), n_neighbors=5, index="ivf")
    np.testing.assert_array_equal(again.neighbors, ref.neighbors)
    np.testing.assert_array_equal(again.distances, ref.distances)

"""PoolEmbeddings streams shards chunk by chunk: same values as a whole read, bounded memory."""

import os
import tracemalloc

import numpy as np
import pytest

from d2scale.errors import D2ScaleError
from d2scale.graph import build_knn_graph
from d2scale.pool.sources import PoolEmbeddings, feature_keys, open_pool
from d2scale.pool.synth import write_pool


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    out = {}
    for layout in ("f16-compressed", "f32-stored"):
        path = str(tmp_path_factory.mktemp(layout))
        write_pool(path, rows=6000, shards=2, seed=3, layout=layout)
        out[layout] = path
    return out


@pytest.mark.parametrize("layout", ["f16-compressed", "f32-stored"])
@pytest.mark.parametrize("rows", [1, 999, 4096, 10**6])
def test_chunks_equal_the_whole_shard(pools, layout, rows):
    blocks = PoolEmbeddings(open_pool(pools[layout]), feature_keys("l14", "image_text"))
    for i in range(2):
        chunks = list(blocks.iter_chunks(i, rows))
        assert [s for s, _ in chunks] == list(range(0, blocks.sizes[i], rows))
        got = np.concatenate([x for _, x in chunks])
        assert got.dtype == np.float32 and got.shape == (blocks.sizes[i], 1536)
        np.testing.assert_array_equal(got, blocks.load(i))
        norms = np.linalg.norm(got.reshape(-1, 2, 768).astype(np.float64), axis=2)
        np.testing.assert_allclose(norms, 1.0, atol=1e-6)


@pytest.mark.parametrize("layout", ["f16-compressed", "f32-stored"])
def test_streaming_memory_does_not_grow_with_the_shard(pools, layout):
    blocks = PoolEmbeddings(open_pool(pools[layout]), feature_keys("l14", "image_text"))

    def peak_of(fn) -> int:
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    whole = peak_of(lambda: blocks.load(0))
    streamed = peak_of(lambda: [None for _ in blocks.iter_chunks(0, 256)])
    assert whole > blocks.sizes[0] * 1536 * 4  # the float32 shard itself
    assert streamed < whole / 4, (streamed, whole)


def test_truncated_member_is_a_clear_error(pools, tmp_path):
    import shutil
    import zipfile

    path = str(tmp_path / "pool")
    shutil.copytree(pools["f32-stored"], path)
    npz = os.path.join(path, "00000000.npz")
    with zipfile.ZipFile(npz) as z:
        arrays = {n[:-4]: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(npz, "w") as z:
        for name, data in arrays.items():
            z.writestr(f"{name}.npy", data[: len(data) // 2] if name == "l14_img" else data)
    blocks = PoolEmbeddings(open_pool(path), feature_keys("l14", "image"))
    with pytest.raises(D2ScaleError, match="l14_img.* truncated"):
        blocks.load(0)


def test_graph_of_a_streamed_pool_equals_the_graph_of_its_array(pools):
    from d2scale.types import ArrayBlocks

    blocks = PoolEmbeddings(open_pool(pools["f16-compressed"]), feature_keys("l14", "image"))
    x = np.concatenate([blocks.load(i) for i in range(2)])
    streamed, _ = build_knn_graph(blocks, n_neighbors=5, index="ivf")
    plain, _ = build_knn_graph(ArrayBlocks(x, 1000), n_neighbors=5, index="ivf")
    np.testing.assert_array_equal(streamed.neighbors, plain.neighbors)
    np.testing.assert_array_equal(streamed.distances, plain.distances)

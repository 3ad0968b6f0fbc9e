"""The torch graph engine on a CUDA GPU: the same graphs as the same code on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from d2scale.graph import build_knn_graph, torch_engine
from d2scale.types import ArrayBlocks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch_engine.torch_cuda_available(), reason="needs torch with CUDA"),
]


def rows(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, dim))
    x = centres[rng.integers(0, 30, n)] + 0.6 * rng.standard_normal((n, dim))
    x[40:45] = x[2]  # duplicates: ties for the re-ranking to order
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def graph(x, device, **kw):
    return build_knn_graph(ArrayBlocks(x, 3000), n_neighbors=10, graph_engine="torch",
                           device=device, **kw)  # fmt: skip


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_exact_graph_on_cuda_is_the_cpu_graph(precision):
    x = rows(8000, 96, seed=1)
    cpu, _ = graph(x, "cpu", index="exact")
    gpu, info = graph(x, "cuda", index="exact", engine_options={"precision": precision})
    np.testing.assert_array_equal(gpu.neighbors, cpu.neighbors)
    np.testing.assert_array_equal(gpu.distances.view(np.uint32), cpu.distances.view(np.uint32))
    assert info["device"] == "cuda" and info["peak_device_bytes"] > 0


def test_ivf_on_cuda_reaches_the_target_and_shards_change_nothing():
    x = rows(20000, 64, seed=2)
    exact, _ = graph(x, "cuda", index="exact")
    ivf, info = graph(x, "cuda", index="ivf", recall=0.9)
    sharded, facts = graph(x, "cuda", index="ivf", recall=0.9,
                           engine_options={"device_budget": 64 * 2 * 3000})  # fmt: skip
    found = np.mean([np.intersect1d(a, b).size / 10 for a, b in
                     zip(ivf.neighbors, exact.neighbors, strict=True)])  # fmt: skip
    assert info["recall_reached"] and found >= 0.9
    assert facts["shards"] > 1
    np.testing.assert_array_equal(sharded.neighbors, ivf.neighbors)

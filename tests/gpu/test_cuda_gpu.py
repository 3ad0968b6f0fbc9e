"""The kernel comparisons of tests/test_kernels.py on a real GPU, through CuPy."""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels import TAIL, check_forward, check_reverse, knn_csr, oracle_forward

from d2scale.d2 import _cuda
from d2scale.kernels import build_host_library

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _cuda.cuda_available(), reason="needs cupy and a CUDA GPU"),
]


@pytest.fixture(scope="module")
def gpu() -> _cuda.CupyBackend:
    return _cuda.CupyBackend()


def test_gpu_forward_equals_cpu_forward_bit_for_bit(gpu):
    check_forward(gpu)


def test_gpu_reverse_equals_the_exact_greedy(gpu):
    totals = check_reverse(gpu)
    assert totals["picks_from_rounds"] > 1000 and totals["picks_cpu_tail"] > 1000


def test_gpu_and_host_emulation_agree_on_a_larger_graph(gpu, tmp_path):
    rng = np.random.default_rng(7)
    csr = knn_csr(rng, 3000, 10, dim=8)
    g0 = oracle_forward(csr.indptr, csr.indices, csr.distances, rng.random(csr.n))
    w = np.exp(-0.1 * csr.distances.astype(np.float64))
    emu = _cuda.HostEmulation(block=256, max_grid=64, library=str(build_host_library(tmp_path)))
    runs = []
    for backend in (gpu, emu):
        stats: dict = {}
        order = _cuda.reverse_order_cuda(csr, g0, w, csr.n, backend=backend, tail=TAIL, stats=stats)
        runs.append((order, stats["rounds"], stats["picks_from_rounds"]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1:] == runs[1][1:]


def test_default_device_backend_is_the_gpu():
    assert isinstance(_cuda.default_backend(), _cuda.CupyBackend)

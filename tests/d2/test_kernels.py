"""CUDA kernels: nvcc compiles them, and their g++ host emulation (the same sources) equals
the exact CPU passes bit for bit, rounds and CPU tail included.

``check_forward`` / ``check_reverse`` take a backend, so tests/gpu/test_cuda_gpu.py runs the
same comparisons on a real GPU.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
from oracle import forward as oracle_forward
from oracle import greedy as oracle_greedy
from oracle import kernel_weights, knn_bruteforce, symmetric_lists, to_csr

from d2scale.d2 import _cuda
from d2scale.errors import D2ScaleError
from d2scale.kernels import (
    HOST_LAUNCH_SOURCE,
    KERNEL_SOURCES,
    NVRTC_OPTIONS,
    build_host_library,
    kernel_signatures,
    module_source,
)
from d2scale.types import CsrGraph

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")


# --- inputs ---------------------------------------------------------------------------------


def oracle_tail(indptr, indices, weights, values, selected, budget):
    """The tail contract of d2scale.d2.exact.greedy_continue, through the plain oracle."""
    return oracle_greedy(indptr, indices, weights, values, budget, selected)[0]


# The CPU engine where it exists: its greedy is the driver's default tail, its forward pass
# a second reference. Without it, the oracle stands in.
TAIL = None if importlib.util.find_spec("d2scale.d2.exact") else oracle_tail
if importlib.util.find_spec("d2scale.d2.forward"):
    from d2scale.d2.forward import forward_scores as CPU_FORWARD
else:
    CPU_FORWARD = None


def knn_csr(rng, n: int, k: int, dim: int = 4) -> CsrGraph:
    """Symmetrised exact kNN graph of ``n`` Gaussian points (dense: n up to a few thousand)."""
    x = rng.normal(size=(n, dim))
    if n <= 60:  # the oracle's plain construction on small graphs
        return CsrGraph(*to_csr(symmetric_lists(knn_bruteforce(x, min(k, n - 1)))))
    sq = (x * x).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))
    d = np.minimum(d, d.T).astype(np.float32)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    a = np.zeros((n, n), dtype=bool)
    a[np.repeat(np.arange(n), k), nn.ravel()] = True
    rows, cols = np.nonzero(a | a.T)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
    return CsrGraph(indptr, cols.astype(np.int32), d[rows, cols])


def random_edges_csr(rng, n: int, n_edges: int, hubs: int = 0, dist: float | None = None):
    """Random symmetric graph; ``hubs`` nodes joined to most others; equal lengths if ``dist``."""
    a = np.zeros((n, n), dtype=bool)
    a[rng.integers(0, n, n_edges), rng.integers(0, n, n_edges)] = True
    for h in rng.choice(n, hubs, replace=False):
        a[h, rng.random(n) < 0.8] = True
    a |= a.T
    np.fill_diagonal(a, False)
    rows, cols = np.nonzero(a)
    d = rng.random((n, n)).astype(np.float32) * 3
    d = np.minimum(d, d.T) if dist is None else np.full((n, n), dist, dtype=np.float32)
    indptr = np.concatenate([[0], np.cumsum(a.sum(1))]).astype(np.int64)
    return CsrGraph(indptr, cols.astype(np.int32), d[rows, cols])


def isolate(csr: CsrGraph, nodes) -> CsrGraph:
    """Remove every edge touching ``nodes``."""
    rows = np.repeat(np.arange(csr.n), np.diff(csr.indptr))
    keep = ~np.isin(rows, nodes) & ~np.isin(csr.indices, nodes)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=csr.n))])
    return CsrGraph(indptr.astype(np.int64), csr.indices[keep], csr.distances[keep])


def dyadic_weights(csr: CsrGraph) -> np.ndarray:
    """Exact weights in {1, 1/2, 1/4}, equal in both directions of an edge."""
    rows = np.repeat(np.arange(csr.n), np.diff(csr.indptr))
    lo, hi = np.minimum(rows, csr.indices), np.maximum(rows, csr.indices)
    return np.array([0.5, 0.25, 1.0])[(lo * 7 + hi * 3) % 3]


def cases(seed: int = 0):
    """(name, csr, forward scores, reverse weights) covering ties, signs, isolation, hubs."""
    rng = np.random.default_rng(seed)
    for t in range(24):
        n, k, gamma = int(rng.integers(2, 160)), 1 + t % 10, (0.1, 1.0)[t % 2]
        csr = knn_csr(rng, n, k)
        s = rng.random(n) if t % 3 else rng.normal(size=n)  # a third have negative scores
        mode = "product" if t % 4 == 3 else "sum"
        g0 = oracle_forward(csr.indptr, csr.indices, csr.distances, s, 1.0, mode)
        yield f"knn-{t}-k{k}-g{gamma}", csr, g0, kernel_weights(csr.distances, gamma)
    for t in range(12):  # integer scores; equal distances, dyadic or 'absolute' weights: ties
        n = int(rng.integers(5, 120))
        csr = random_edges_csr(rng, n, 2 * n, dist=1.0)
        g0 = rng.integers(-2, 6, n).astype(np.float64)
        w = (
            kernel_weights(csr.distances, 0.1),
            dyadic_weights(csr),
            kernel_weights(csr.distances, 0.1, "absolute"),
        )[t % 3]
        yield f"ties-{t}", csr, g0, w
    for t in range(6):  # isolated nodes
        csr = isolate(knn_csr(rng, 80, 3), rng.choice(80, 15, replace=False))
        yield (
            f"isolated-{t}",
            csr,
            rng.integers(0, 4, 80).astype(np.float64) + rng.random(80),
            kernel_weights(csr.distances, 1.0),
        )
    for t in range(4):  # hubs: in-degree in the hundreds
        csr = random_edges_csr(rng, 400, 600, hubs=3)
        yield f"hub-{t}", csr, rng.random(400) * 10, kernel_weights(csr.distances, 0.1 * (t + 1))
    csr = random_edges_csr(rng, 90, 300)  # asymmetric weights: the greedy uses row u's copy
    yield "asymmetric-weights", csr, rng.random(90) * 5, rng.random(csr.n_edges)
    yield (
        "empty-graph",
        CsrGraph(np.zeros(6, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)),
        rng.normal(size=5),
        np.zeros(0),
    )


# --- checks shared with the GPU tests ------------------------------------------------------


def check_forward(backend, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for t in range(12):
        csr = knn_csr(rng, int(rng.integers(2, 150)), 1 + t % 10)
        s = rng.normal(size=csr.n) * 10.0 ** rng.integers(-8, 3, csr.n)
        s[rng.random(csr.n) < 0.1] = 0.0
        for mode in ("sum", "product"):
            expected = oracle_forward(csr.indptr, csr.indices, csr.distances, s, 0.7, mode)
            got = _cuda.forward_scores_cuda(
                csr, s, kernel_weights(csr.distances, 0.7), mode, 1e-7, backend=backend
            )
            np.testing.assert_array_equal(got.view(np.uint64), expected.view(np.uint64))
            if CPU_FORWARD is not None:
                cpu = CPU_FORWARD(csr, s, gamma_forward=0.7, mode=mode, eps=1e-7, device="cpu")
                np.testing.assert_array_equal(got.view(np.uint64), cpu.view(np.uint64))


def check_reverse(backend, seed: int = 0) -> dict[str, int]:
    """Full orders and every-budget prefixes equal the oracle; returns summed statistics."""
    totals = {"rounds": 0, "picks_from_rounds": 0, "picks_cpu_tail": 0}
    for name, csr, g0, w in cases(seed):
        expected, _ = oracle_greedy(csr.indptr, csr.indices, w, g0)
        for budget in sorted({1, 3, csr.n // 4, csr.n // 2, csr.n, csr.n + 5}):
            stats: dict = {}
            got = _cuda.reverse_order_cuda(
                csr, g0, w, budget, backend=backend, tail=TAIL, stats=stats
            )
            np.testing.assert_array_equal(got, expected[:budget], err_msg=f"{name} K={budget}")
            for key in totals:
                totals[key] += stats[key]
    return totals


# --- compilation ----------------------------------------------------------------------------


def _nvcc(tmp_path, source: str, *flags: str) -> str:
    src = tmp_path / "module.cu"
    src.write_text(source)
    out = tmp_path / "module.out"
    done = subprocess.run(
        [NVCC, *flags, "-arch=sm_90", "-Werror", "all-warnings", str(src), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return out.read_text(errors="replace")


@needs_nvcc
@pytest.mark.parametrize("path", KERNEL_SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles_each_source_to_cubin(tmp_path, path):
    _nvcc(tmp_path, path.read_text(), "-cubin", *NVRTC_OPTIONS)


@needs_nvcc
def test_nvcc_ptx_of_the_module_has_no_fused_multiply_add(tmp_path):
    # Without --fmad=false the explicit _rn intrinsics alone must keep FMA out of the code.
    ptx = _nvcc(tmp_path, module_source(), "-ptx", "-std=c++17")
    assert "fma" not in ptx
    assert set(kernel_signatures()) <= set(re.findall(r"\.entry\s+(\w+)", ptx))


def test_sources_are_safe_to_emulate_thread_by_thread():
    banned = re.compile(r"\b(__syncthreads|__shared__|atomic\w*|__shfl\w*|__syncwarp)\b")
    for path in KERNEL_SOURCES:
        code = re.sub(r"//[^\n]*", "", path.read_text())
        assert banned.search(code) is None, f"{path.name} needs more than host_emulation.h"


def test_every_kernel_is_launchable_in_emulation(tmp_path_factory):
    lib = ctypes.CDLL(str(emulation_library(tmp_path_factory)))
    names = set(kernel_signatures())
    assert names >= {"d2_forward", "d2_mark_settled", "d2_commit_settled", "d2_recompute"}
    for name in names:  # grid 0: registered kernels return 0 without running a thread
        assert lib.d2_emu_launch(name.encode(), 0, 1, None) == 0, name
    assert lib.d2_emu_launch(b"no_such_kernel", 0, 1, None) == -1
    assert set(re.findall(r"D2_KERNEL\((d2_\w+)\)", HOST_LAUNCH_SOURCE.read_text())) == names


def test_launch_rejects_arrays_of_the_wrong_type(emu):
    out = np.empty(3, dtype=np.float32)
    z = np.zeros(4, np.int64)
    with pytest.raises(TypeError, match="out"):
        emu.launch("d2_forward", 3, z, np.zeros(0, np.int32), np.zeros(0), np.ones(3), 1e-7, 0, out)


# --- emulated passes ------------------------------------------------------------------------


def emulation_library(tmp_path_factory):
    return build_host_library(tmp_path_factory.getbasetemp() / "kernels")


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    return _cuda.HostEmulation(library=str(emulation_library(tmp_path_factory)))


def test_forward_kernel_equals_cpu_forward_bit_for_bit(emu):
    check_forward(emu)


def test_forward_rejects_an_unknown_mode(emu):
    csr = CsrGraph(np.zeros(2, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    with pytest.raises(D2ScaleError, match="'mode' parameter"):
        _cuda.forward_scores_cuda(csr, np.ones(1), np.zeros(0), "mean", 1e-7, backend=emu)


def test_reverse_rounds_plus_cpu_tail_equal_the_exact_greedy(emu):
    totals = check_reverse(emu)
    # Both halves did real work, so neither can hide the other's mistakes.
    assert totals["picks_from_rounds"] > 1000 and totals["picks_cpu_tail"] > 1000


def test_rounds_alone_finish_small_budgets_without_the_cpu(emu):
    rng = np.random.default_rng(3)
    csr = knn_csr(rng, 300, 5)
    g0 = oracle_forward(csr.indptr, csr.indices, csr.distances, rng.random(300))
    w = kernel_weights(csr.distances, 1.0)
    expected, _ = oracle_greedy(csr.indptr, csr.indices, w, g0, 40)

    def no_tail(*args):
        raise AssertionError("the CPU tail was called")

    stats: dict = {}
    got = _cuda.reverse_order_cuda(csr, g0, w, 40, backend=emu, tail=no_tail, stats=stats)
    np.testing.assert_array_equal(got, expected)
    assert stats["picks_from_rounds"] == 40 and stats["rounds"] >= 1


@pytest.mark.parametrize("max_rounds", [0, 1, 2, 3])
def test_state_handed_to_the_tail_after_any_round_is_the_exact_greedy_state(emu, max_rounds):
    rng = np.random.default_rng(max_rounds)
    csr = knn_csr(rng, 200, 6)
    g0 = oracle_forward(csr.indptr, csr.indices, csr.distances, rng.random(200))
    w = kernel_weights(csr.distances, 0.1)
    expected, _ = oracle_greedy(csr.indptr, csr.indices, w, g0)
    seen = {}

    def checking_tail(indptr, indices, weights, values, selected, budget):
        head = expected[: int(selected.sum())]
        assert set(np.flatnonzero(selected)) == set(head)
        state, sel = g0.copy(), np.zeros(csr.n, bool)
        for u in head:  # replay the greedy's first picks
            sel[u] = True
            for e in range(indptr[u], indptr[u + 1]):
                if not sel[indices[e]]:
                    state[indices[e]] = state[indices[e]] - weights[e] * state[u]
        np.testing.assert_array_equal(values[~sel].view(np.uint64), state[~sel].view(np.uint64))
        seen["head"] = len(head)
        return oracle_tail(indptr, indices, weights, values, selected, budget)

    stats: dict = {}
    got = _cuda.reverse_order_cuda(
        csr, g0, w, csr.n, backend=emu, tail=checking_tail, max_rounds=max_rounds, stats=stats
    )
    np.testing.assert_array_equal(got, expected)
    assert stats["rounds"] == max_rounds and seen["head"] == stats["picks_from_rounds"]
    assert (seen["head"] > 0) == (max_rounds > 0)
    assert (stats["rolled_back"] > 0) == (max_rounds > 0)  # the rollback path ran


def test_negative_weights_skip_the_rounds_and_stay_exact(emu):
    rng = np.random.default_rng(5)
    csr = random_edges_csr(rng, 60, 150)
    g0, w = rng.random(60), rng.normal(size=csr.n_edges)
    stats: dict = {}
    got = _cuda.reverse_order_cuda(csr, g0, w, 60, backend=emu, tail=oracle_tail, stats=stats)
    np.testing.assert_array_equal(got, oracle_greedy(csr.indptr, csr.indices, w, g0)[0])
    assert stats["rounds"] == 0 and stats["picks_cpu_tail"] == 60


def test_reverse_rejects_a_graph_that_is_not_symmetric(emu):
    csr = CsrGraph(np.array([0, 1, 1], np.int64), np.array([1], np.int32), np.ones(1, np.float32))
    with pytest.raises(D2ScaleError, match="not symmetric"):
        _cuda.reverse_order_cuda(csr, np.ones(2), np.ones(1), 2, backend=emu, tail=oracle_tail)


def test_cuda_device_without_a_gpu_is_a_clear_error():
    if _cuda.cuda_available():
        pytest.skip("a CUDA GPU is present")
    csr = CsrGraph(np.zeros(2, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    with pytest.raises(D2ScaleError, match="device='cpu'"):
        _cuda.forward_scores_cuda(csr, np.ones(1), np.zeros(0), "sum", 1e-7)


def fake_cupy(emu: _cuda.HostEmulation) -> types.ModuleType:
    """A cupy stand-in: NumPy arrays, RawModule kernels run by the host emulation."""
    mod = types.ModuleType("cupy")
    mod.__getattr__ = lambda name: getattr(np, name)
    mod.asnumpy = np.asarray
    mod.cuda = types.SimpleNamespace(is_available=lambda: True)

    class RawModule:
        def __init__(self, code: str, options: tuple[str, ...]) -> None:
            assert "--fmad=false" in options
            self.names = set(re.findall(r'extern "C" __global__ void (\w+)', code))

        def get_function(self, name: str):
            assert name in self.names
            return lambda grid, block, args: emu.run(name, grid[0], block[0], args)

    mod.RawModule = RawModule
    return mod


def test_cupy_backend_code_path_through_a_fake_cupy(emu, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(emu))
    monkeypatch.setattr(_cuda, "_cupy_backend", _cuda._cupy_backend.__wrapped__)
    assert _cuda.cuda_available()
    backend = _cuda.default_backend()
    assert isinstance(backend, _cuda.CupyBackend)
    backend.block, backend.max_grid = 32, 5
    check_forward(backend, seed=1)
    assert check_reverse(backend, seed=1)["picks_from_rounds"] > 0


def test_a_chain_of_dependent_picks_goes_to_the_cpu_after_a_thin_round(emu):
    n = 300  # path graph, scores rising along it: every round settles exactly one node
    indptr = np.concatenate([[0], np.cumsum([1] + [2] * (n - 2) + [1])]).astype(np.int64)
    indices = np.array([j for i in range(n) for j in (i - 1, i + 1) if 0 <= j < n], np.int32)
    csr = CsrGraph(indptr, indices, np.ones(len(indices), np.float32))
    g0, w = np.arange(1.0, n + 1), np.full(len(indices), 1e-6)
    expected, _ = oracle_greedy(indptr, indices, w, g0)
    for least, rounds in ((1, n), (2, 1)):
        stats: dict = {}
        got = _cuda.reverse_order_cuda(
            csr, g0, w, n, backend=emu, tail=oracle_tail, min_settled=least, stats=stats
        )
        np.testing.assert_array_equal(got, expected)
        assert stats["rounds"] == rounds and stats["settled_per_round"] == [1] * rounds

"""CUDA message passing: the forward kernel and an exact parallel reverse pass in rounds.

The driver is written once against :class:`Backend` (launch a kernel, move arrays, array
module ``xp``). :class:`CupyBackend` runs ``kernels/*.cu`` on a GPU; :class:`HostEmulation`
runs the same sources compiled by g++ over NumPy arrays, so CPU-only tests exercise the
whole algorithm.

Reverse pass (SPEC §1): repeat: ``u`` = argmax of ``g`` over unselected nodes (ties → lowest
index); select ``u``; ``g_v ← g_v − w_uv·g_u`` for every unselected ``v ∈ N(u)``. Write
``v ≻ w`` ("v beats w") for ``g_v > g_w or (g_v = g_w and v < w)``; weights are ≥ 0.

Rounds. Each round settles every unselected ``v`` with ``cur_v ≥ 0`` that beats all its
unselected neighbours, records its pick score ``p_v = cur_v``, then recomputes ``cur_x`` of
each unselected ``x`` next to a newly settled node as ``g0_x`` minus ``w_ux·p_u`` over all
settled neighbours ``u``, subtracted in (``p`` desc, index asc) order without FMA.

Lemma 1 (monotone phase is sorted). While picks have ``p ≥ 0`` every update subtracts
``fl(w·p) ≥ 0`` and rounding is monotone, so no score rises and pick scores do not increase;
if two consecutive picks have equal scores, the later one already had that score when the
earlier one won the tie, so its index is larger. Hence the greedy order π restricted to
picks with ``p ≥ 0`` is sorted by (``p`` desc, index asc).

Lemma 2 (dropping or inserting subtractions). ``fl(a − b) ≤ a`` for ``b ≥ 0`` and
``fl(x − b)`` is monotone in ``x``, so deleting terms from a sequence of non-negative
subtractions can only raise the result and inserting terms can only lower it.

Invariant, by induction over rounds: each node ``u`` settled in round ``r`` is picked by the
greedy with ``p_u`` equal to its recorded score ``≥ 0``, after all its neighbours settled
before round ``r`` and before all its other neighbours. Step: let ``v`` settle in round ``r``,
``A`` = its neighbours settled earlier (all picked before ``v`` by induction), ``B`` = the rest.
Suppose the first node of ``B`` picked, ``w``, comes before ``v``, at time ``t``. Until ``t``,
``v``'s greedy value is ``g0_v`` minus a prefix-ordered subset of ``A``'s updates, so by
Lemma 2 it is ``≥ cur_v ≥ 0``; therefore every pick up to ``t`` has ``p ≥ 0`` and (Lemma 1)
``A``'s updates come in (``p`` desc, index asc) order, exactly as the kernel subtracts them.
``w``'s value at ``t`` contains all updates of its settled neighbours (induction) plus
possibly more, so it is ``≤ cur_w`` (Lemma 2). Then ``v ≻ w`` at time ``t`` because
``v ≻ w`` under ``cur``: a contradiction. So ``v`` is picked after exactly ``A``, with value
``cur_v`` bit for bit.

Consequences. (a) After a round let ``M`` = max ``cur`` over unselected nodes (−∞ if none)
and ``F`` = settled nodes with ``p > M``. Any unselected ``x`` has greedy value ``≤ cur_x ≤ M``
whenever it could be picked, while an unpicked ``f ∈ F`` still holds ``≥ p_f > M``; nodes of
``S∖F`` have ``p ≤ M`` and come later by Lemma 1. So ``F``, sorted by (``p`` desc, index
asc), is exactly the first ``|F|`` greedy picks. (b) When a round settles nothing, the global
best unselected node beats all its neighbours, so ``M < 0`` and ``F`` = all settled nodes.
(c) To hand over after ``F``, un-settle ``S∖F`` and recompute every unselected node from
``F``: this is the exact greedy state after ``|F|`` picks, from which the CPU
``greedy_continue`` finishes (the negative phase, where updates raise scores, stays there).

Incremental updates in round order would not be exact: a node settled in a later round can
have a higher pick score than one settled earlier, so the subtraction order would differ
from the greedy's and the last bit can change.
"""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from d2scale.backends import cuda_available
from d2scale.errors import D2ScaleError
from d2scale.kernels import Param, build_host_library, kernel_signatures, load_cupy_module
from d2scale.params import check
from d2scale.types import CsrGraph

Tail = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


# --- backends -------------------------------------------------------------------------------


class Backend(Protocol):
    """Where kernels run: ``xp`` is the array module (numpy or cupy) of its arrays."""

    name: str
    xp: Any

    def asarray(self, a: np.ndarray) -> Any: ...

    def to_host(self, a: Any) -> np.ndarray: ...

    def launch(self, kernel: str, n: int, *args: Any) -> None:
        """Run ``kernel(n, *args)`` with enough threads for ``n`` items (grid-stride)."""


def _grid(n: int, block: int, max_grid: int) -> int:
    return max(1, min(-(-n // block), max_grid))


def _checked_args(params: tuple[Param, ...], args: tuple, is_array: Callable) -> list:
    """Arguments converted to the kernel's C types; array dtypes checked against pointers."""
    if len(args) != len(params):
        raise TypeError(f"kernel takes {len(params)} arguments, got {len(args)}")
    out = []
    for p, a in zip(params, args, strict=True):
        if not p.pointer:
            out.append(p.dtype.type(a))
        elif not (is_array(a) and a.dtype == p.dtype and a.flags.c_contiguous):
            raise TypeError(f"kernel argument {p.name!r} must be a contiguous {p.dtype} array")
        else:
            out.append(a)
    return out


class CupyBackend:
    """Real GPU: kernels compiled by NVRTC through ``cupy.RawModule``."""

    name = "cupy"

    def __init__(self, block: int = 256, max_grid: int = 65535) -> None:
        import cupy

        self.xp = cupy
        self.block, self.max_grid = block, max_grid
        self._module = load_cupy_module()
        self._functions: dict[str, Any] = {}
        self._signatures = kernel_signatures()

    def asarray(self, a: np.ndarray) -> Any:
        return self.xp.asarray(a)

    def to_host(self, a: Any) -> np.ndarray:
        return self.xp.asnumpy(a)

    def launch(self, kernel: str, n: int, *args: Any) -> None:
        if n == 0:
            return
        values = _checked_args(
            self._signatures[kernel], (n, *args), lambda a: isinstance(a, self.xp.ndarray)
        )
        if kernel not in self._functions:
            self._functions[kernel] = self._module.get_function(kernel)
        grid = _grid(n, self.block, self.max_grid)
        self._functions[kernel]((grid,), (self.block,), tuple(values))


_CTYPES = {
    np.dtype(np.int64): ctypes.c_longlong,
    np.dtype(np.int32): ctypes.c_int,
    np.dtype(np.float64): ctypes.c_double,
}


class HostEmulation:
    """The same kernels compiled by g++, threads run one after another over NumPy arrays.

    The small default grid (8 blocks of 64 threads) makes grid-stride loops wrap often.
    """

    name = "host-emulation"
    xp = np

    def __init__(self, block: int = 64, max_grid: int = 8, library: str | None = None) -> None:
        self.block, self.max_grid = block, max_grid
        self._lib = ctypes.CDLL(str(library or build_host_library()))
        self._lib.d2_emu_launch.argtypes = [
            ctypes.c_char_p,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_void_p),
        ]
        self._lib.d2_emu_launch.restype = ctypes.c_int
        self._signatures = kernel_signatures()

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a)

    def to_host(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def launch(self, kernel: str, n: int, *args: Any) -> None:
        if n == 0:
            return
        self.run(kernel, _grid(n, self.block, self.max_grid), self.block, (n, *args))

    def run(self, kernel: str, grid: int, block: int, args: tuple) -> None:
        """Run ``kernel`` over ``grid`` × ``block`` threads, like ``RawKernel.__call__``."""
        params = self._signatures[kernel]
        values = _checked_args(params, args, lambda a: isinstance(a, np.ndarray))
        boxes = [
            ctypes.c_void_p(v.ctypes.data) if p.pointer else _CTYPES[p.dtype](v)
            for p, v in zip(params, values, strict=True)
        ]
        pointers = (ctypes.c_void_p * len(boxes))(*[ctypes.addressof(b) for b in boxes])
        if self._lib.d2_emu_launch(kernel.encode(), grid, block, pointers) != 0:
            raise KeyError(f"kernel {kernel!r} is missing from kernels/host_launch.cpp")


@functools.lru_cache(maxsize=1)
def _cupy_backend() -> CupyBackend:
    return CupyBackend()


def default_backend() -> Backend:
    """The GPU backend; a one-sentence error where no GPU can be used."""
    if not cuda_available():
        raise D2ScaleError(
            "device='cuda' needs cupy (pip install 'd2scale[gpu]') and a CUDA "
            "GPU; none was found, use device='cpu'."
        )
    return _cupy_backend()


# --- forward --------------------------------------------------------------------------------


def forward_scores_cuda(
    csr: CsrGraph,
    scores: np.ndarray,
    weights: np.ndarray,
    mode: str,
    eps: float,
    *,
    backend: Backend | None = None,
) -> np.ndarray:
    """Forward pass on ``backend`` (default: GPU); bit-identical to the CPU pass."""
    check("mode", mode)
    be = backend if backend is not None else default_backend()
    xp = be.xp
    out = xp.empty(csr.n, dtype=np.float64)
    be.launch(
        "d2_forward",
        csr.n,
        be.asarray(csr.indptr.astype(np.int64, copy=False)),
        be.asarray(csr.indices.astype(np.int32, copy=False)),
        be.asarray(np.asarray(weights, dtype=np.float64)),
        be.asarray(np.asarray(scores, dtype=np.float64)),
        float(eps),
        int(mode == "product"),
        out,
    )
    return be.to_host(out)


# --- reverse --------------------------------------------------------------------------------


def _default_tail() -> Tail:
    from d2scale.d2.exact import greedy_continue

    return greedy_continue


def _transposed_weights(be: Backend, indptr: Any, indices: Any, weights: Any) -> Any:
    """``wt[e]`` for ``e = (v, u)``: the weight stored at ``(u, v)``, which the greedy uses."""
    rev = be.xp.empty(indices.shape[0], dtype=np.int64)
    be.launch("d2_transpose_positions", indptr.shape[0] - 1, indptr, indices, rev)
    if rev.shape[0] and bool(be.xp.any(rev < 0)):
        raise D2ScaleError(
            "The neighbourhood graph is not symmetric (some edge u→v has no "
            "v→u); pass the symmetrised CSR graph."
        )
    return weights[rev]


def _final_mask(xp: Any, cur: Any, status: Any) -> Any:
    """Settled nodes whose pick score beats every unselected score: a greedy prefix."""
    free = status < 0
    best = xp.max(xp.where(free, cur, -np.inf))
    return ~free & (cur > best)


def _count(xp: Any, mask: Any) -> int:
    return int(xp.count_nonzero(mask))


def _run_rounds(
    be: Backend,
    indptr: Any,
    indices: Any,
    wt: Any,
    g0: Any,
    budget: int,
    max_rounds: int,
    min_settled: int,
) -> tuple[Any, Any, dict[str, Any]]:
    """Settle rounds until none settles, ``budget`` picks are final, ``max_rounds`` ran, or
    a round settles fewer than ``min_settled`` nodes while every settled pick is final (a
    chain of dependent picks: one per round is slower than the CPU, and stopping loses none).

    Returns ``(cur, status, info)``; if it stopped early, the state is rolled back to the
    exact greedy state after the final prefix F (consequence (c) above).
    """
    xp, n = be.xp, g0.shape[0]
    cur, status = g0.copy(), xp.full(n, -1, dtype=np.int32)
    flag, scratch = xp.zeros(n, dtype=np.int32), xp.empty(indices.shape[0], dtype=np.int32)
    per_round: list[int] = []
    while len(per_round) < max_rounds:
        be.launch("d2_mark_settled", n, indptr, indices, cur, status, flag)
        new = _count(xp, flag)
        if new == 0:
            break
        be.launch("d2_commit_settled", n, flag, len(per_round), status)
        be.launch("d2_recompute", n, indptr, indices, wt, g0, status, len(per_round), scratch, cur)
        per_round.append(new)
        n_final = _count(xp, _final_mask(xp, cur, status))
        if n_final >= budget or (new < min_settled and n_final == sum(per_round)):
            break
    settled = sum(per_round)
    final = _final_mask(xp, cur, status)
    n_final = _count(xp, final)
    rolled_back = 0
    if n_final < min(settled, budget):  # stopped early, tail needed: roll back to prefix F
        status = xp.where(final, status, -1).astype(np.int32)
        be.launch("d2_recompute", n, indptr, indices, wt, g0, status, -1, scratch, cur)
        rolled_back = settled - n_final
    info = {
        "rounds": len(per_round),
        "settled_per_round": per_round,
        "settled_in_rounds": settled,
        "rolled_back": rolled_back,
    }
    return cur, status, info


@dataclass
class SettledPrefix:
    """First greedy picks found by rounds; ``values``/``selected`` are the exact greedy state
    after ``order`` (``None`` when ``order`` already holds the whole budget)."""

    order: np.ndarray
    values: np.ndarray | None
    selected: np.ndarray | None
    info: dict[str, Any]


def settle_prefix(
    csr: CsrGraph,
    forward: np.ndarray,
    weights: np.ndarray,
    budget: int,
    *,
    backend: Backend | None = None,
    max_rounds: int | None = None,
    min_settled: int | None = None,
) -> SettledPrefix:
    """Rounds on ``backend`` (default: GPU): the exact greedy order up to ``budget`` picks, or
    the part of it the rounds proved (at most the non-negative phase).

    Rounds stop after ``max_rounds`` (default: no limit), or after a round that settles
    fewer than ``min_settled`` nodes (default ``max(1, N // 10000)``) when all settled picks
    are final: a long chain of dependent picks is cheaper on the CPU than a round per pick.
    """
    n, budget = csr.n, max(0, min(int(budget), csr.n))
    forward = np.asarray(forward, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    assert forward.shape == (n,) and weights.shape == (csr.n_edges,)
    if not (np.isfinite(forward).all() and np.isfinite(weights).all()):
        raise D2ScaleError("Reverse message passing needs finite forward scores and weights.")
    be = backend if backend is not None else default_backend()
    info: dict[str, Any] = {
        "backend": be.name,
        "budget": budget,
        "rounds": 0,
        "settled_per_round": [],
        "settled_in_rounds": 0,
        "rolled_back": 0,
        "picks_from_rounds": 0,
    }
    started = time.perf_counter()
    prefix = SettledPrefix(np.empty(0, dtype=np.int64), forward.copy(), np.zeros(n, bool), info)
    if budget > 0 and (weights >= 0).all():  # the proof needs non-negative weights
        indptr = be.asarray(csr.indptr.astype(np.int64, copy=False))
        indices = be.asarray(csr.indices.astype(np.int32, copy=False))
        wt = _transposed_weights(be, indptr, indices, be.asarray(weights))
        limit = n if max_rounds is None else max_rounds
        least = max(1, n // 10_000) if min_settled is None else min_settled
        cur, status, rounds_info = _run_rounds(
            be, indptr, indices, wt, be.asarray(forward), budget, limit, least
        )
        picked = np.flatnonzero(be.to_host(status) >= 0)
        values = np.array(be.to_host(cur), dtype=np.float64)
        prefix.selected[picked] = True
        prefix.order = picked[np.lexsort((picked, -values[picked]))][:budget].astype(np.int64)
        prefix.values = values
        info.update(rounds_info, picks_from_rounds=len(prefix.order))
    if len(prefix.order) == budget:
        prefix.values = prefix.selected = None
    info["seconds_rounds"] = time.perf_counter() - started
    return prefix


def reverse_order_cuda(
    csr: CsrGraph,
    forward: np.ndarray,
    weights: np.ndarray,
    budget: int,
    *,
    backend: Backend | None = None,
    tail: Tail | None = None,
    max_rounds: int | None = None,
    min_settled: int | None = None,
    stats: dict[str, Any] | None = None,
) -> np.ndarray:
    """Exact greedy pick order (int64, ``min(budget, N)`` nodes) of the reverse pass.

    :func:`settle_prefix` settles the non-negative phase on ``backend`` (default: GPU);
    ``tail`` (default :func:`d2scale.d2.exact.greedy_continue`) finishes on the CPU from the
    exact state. ``max_rounds``/``min_settled``: see :func:`settle_prefix`. ``stats``
    receives rounds and where the picks came from (per call: no module state).
    """
    started = time.perf_counter()
    prefix = settle_prefix(
        csr,
        forward,
        weights,
        budget,
        backend=backend,
        max_rounds=max_rounds,
        min_settled=min_settled,
    )
    order, info = prefix.order, dict(prefix.info, picks_cpu_tail=0)
    if prefix.values is not None:
        continue_greedy = tail if tail is not None else _default_tail()
        rest = continue_greedy(
            csr.indptr,
            csr.indices,
            np.asarray(weights, dtype=np.float64),
            prefix.values,
            prefix.selected,
            info["budget"] - len(order),
        )
        order = np.concatenate([order, np.asarray(rest, dtype=np.int64)])
        info["picks_cpu_tail"] = len(rest)
    info["seconds_total"] = time.perf_counter() - started
    if stats is not None:
        stats.update(info)
    return order

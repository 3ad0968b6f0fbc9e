"""The torch graph engine: a pool's kNN graph from GEMMs on a GPU (the same code runs on the CPU).

Candidates come from blocked GEMMs in reduced precision (fp16 or bf16 on a GPU, fp32 on the
CPU): each distinct row's best ``c`` rows by the approximate squared distance
‖q‖² + ‖b‖² − 2q·b among the rows it searches (``torch.topk`` per block, blocks merged). The
candidates are re-ranked on the CPU by the compiled engine's own exact kernels (float64 sums of
float32 differences, ties by id: :func:`scan._exact` and :func:`scan._rank`), and each row is
*certified* as :func:`scan.topk` does: its kept entries are the exact top ones when the last
kept distance lies below the worst fetched approximate distance minus a bound on the GEMM's
error (:func:`error_bound`); rows that fail are searched again with four times the
candidates. So the exact graph equals the compiled engine's, ids and distances, and an IVF graph
holds each row's exact neighbours among the rows it probes, for any shard or block size.

IVF: seeded k-means lists (centroid sums in float64 on the host), every row probing its
``nprobe`` nearest lists, ``nprobe`` tuned as the compiled engine tunes per-row probing
(:func:`ivf.recall_from_probes` on held-out rows' exact neighbours). No PCA: the GEMM runs in the
full space. The lists live on the device sorted by (list, id); when they exceed the device
budget they are held in shards (ranges of that order), uploaded one at a time, and every row
keeps its best candidates across shards. The pool's float32 rows stay in host memory (the
re-ranking reads them), so the host must hold them within the memory limit.

torch is imported only when this engine runs (it is an optional extra).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from d2scale import backends
from d2scale.backends import peak_rss_bytes, run_chunks
from d2scale.errors import D2ScaleError
from d2scale.graph import dedup, ivf, rules, scan, shards

PRECISIONS = ("fp16", "bf16", "fp32")
WIDEN = 2  # candidates fetched on the device per row kept (k + 1)
Q_TILE = 4096  # queries per GEMM
B_TILE = 65536  # database rows per GEMM
DEVICE_MEMORY_FRACTION = 0.5  # default device budget: this share of the free device memory
HOST_CHUNK_ROWS = 65536  # rows gathered, uploaded or re-ranked at a time
QUERY_BLOCK = 1 << 21  # rows searched (and saved, for a resumed build) at a time
_UNIT = {"fp16": 2.0**-11, "bf16": 2.0**-8, "fp32": 0.0}  # unit roundoff of the GEMM's inputs
_TINY = {"fp16": 2.0**-25, "bf16": 2.0**-134, "fp32": 2.0**-150}  # half the subnormal spacing
_FP16_PRODUCT_MAX = 2.0**14  # fp16 inputs scaled so that no product |q·b| exceeds this


# ---------------------------------------------------------------- engine and device


def torch_cuda_available() -> bool:
    """:func:`d2scale.backends.torch_cuda_available`, answered without importing torch where
    it is not installed or no GPU device node exists (so ``auto`` costs nothing there)."""
    if importlib.util.find_spec("torch") is None:
        return False
    nodes = any(name.startswith(("nvidia", "dxg", "kfd")) for name in _listdir("/dev"))
    if not nodes and not os.path.exists("/proc/driver/nvidia"):
        return False
    return backends.torch_cuda_available()


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def require_torch():
    """The ``torch`` module, or one D2ScaleError line when it is missing."""
    try:
        import torch
    except ImportError:
        raise D2ScaleError(
            "graph engine 'torch' needs PyTorch (pip install 'd2scale[vision]', or a CUDA "
            "build of torch on a GPU machine); use --graph-engine compiled"
        ) from None
    return torch


def resolve_engine(engine: str, device: str) -> tuple[str, str | None, str]:
    """``(engine, torch device or None, why)`` for the ``graph_engine`` and ``device``
    parameters: ``auto`` is the torch engine on CUDA where torch sees a GPU (and ``device``
    is not ``cpu``), else the compiled CPU engine, as before the option existed. ``--device
    cuda`` without a GPU for the engine that runs is refused (the compiled engine's GPU
    scan runs on CuPy)."""
    from d2scale.params import check

    check("graph_engine", engine)
    check("device", device)
    if engine == "auto" and device != "cpu" and torch_cuda_available():
        return "torch", "cuda", "auto: torch sees a CUDA GPU"
    if engine in ("auto", "compiled"):
        if device == "cuda":
            backends.resolve_device(device)
        why = "asked for" if engine == "compiled" else f"auto: no CUDA GPU for torch ({device})"
        return "compiled", None, why
    require_torch()
    return "torch", backends.resolve_device(device, runtime="torch"), "asked for"


# ---------------------------------------------------------------- error bound


def error_bound(precision: str, dim: int, q_norms: np.ndarray, max_b: float, scale: float,
                out_unit: float) -> np.ndarray:  # fmt: skip
    """Per query, a bound on |approximate − exact| squared distance of the device's
    ``‖b‖² − 2q·b`` with inputs rounded to ``precision`` (after multiplying by ``scale``, a
    power of two), products accumulated in float32 and the result rounded with unit
    ``out_unit``: the input roundings (relative ``u`` and absolute underflow ``η`` per
    element), the output rounding, and every float32 rounding
    (:func:`scan.l2_error_bound`), with a 10% margin."""
    u, eta = _UNIT[precision], _TINY[precision] / scale
    q = np.asarray(q_norms, dtype=np.float64)
    qb = q * max_b
    ip = u * (2 + u) * qb + eta * math.sqrt(dim) * (q + max_b) * (1 + u) + dim * eta * eta
    ip += out_unit * (qb + ip) * (1 + u) ** 2
    return 2.2 * ip + scan.l2_error_bound(dim, q, max_b)


# ---------------------------------------------------------------- the device side


@dataclass
class Device:
    """The torch device, the GEMM's precision and how results are rounded."""

    torch: object
    name: str  # "cuda" or "cpu"
    precision: str
    scale: float = 1.0
    out_fp32: bool = True

    @property
    def dev(self):
        return self.torch.device(self.name)

    @property
    def dtype(self):
        return {"fp16": self.torch.float16, "bf16": self.torch.bfloat16,
                "fp32": self.torch.float32}[self.precision]  # fmt: skip

    @property
    def out_unit(self) -> float:
        return 2.0**-24 if self.out_fp32 else _UNIT[self.precision]

    def upload(self, x: np.ndarray):
        """float32 host rows → device rows in the GEMM's precision (scaled)."""
        t = self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return self.convert(t.to(self.dev))

    def convert(self, t):
        """float32 device rows → the GEMM's precision (scaled: exact, a power of two)."""
        if self.scale != 1.0:
            t = t * self.scale
        return t.to(self.dtype)

    def scores(self, q, b, bn):
        """``bn − 2·q·bᵀ`` in float32 (``bn``: the rows' squared norms)."""
        torch = self.torch
        if self.precision == "fp32":
            ip = q @ b.T
        elif self.out_fp32:
            try:
                ip = torch.mm(q, b.T, out_dtype=torch.float32)
            except (RuntimeError, TypeError):  # no mixed-precision mm here: rounded output
                self.out_fp32 = False
                ip = (q @ b.T).float()
        else:
            ip = (q @ b.T).float()
        if self.scale != 1.0:
            ip.mul_(1.0 / (self.scale * self.scale))
        return ip.mul_(-2.0).add_(bn)


@contextlib.contextmanager
def _exact_matmuls(torch):
    """float32 GEMMs in float32 (no TF32) and half-precision ones accumulated in float32
    (no reduced-precision reductions) while the engine runs; restored afterwards."""
    cuda = torch.backends.cuda.matmul
    saved = (torch.get_float32_matmul_precision(),
             cuda.allow_fp16_reduced_precision_reduction,
             cuda.allow_bf16_reduced_precision_reduction)  # fmt: skip
    torch.set_float32_matmul_precision("highest")
    cuda.allow_fp16_reduced_precision_reduction = False
    cuda.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        cuda.allow_fp16_reduced_precision_reduction = saved[1]
        cuda.allow_bf16_reduced_precision_reduction = saved[2]


def _fp16_scale(max_norm: float) -> float:
    """A power of two that keeps every fp16 input and product in range: |q·b| ≤ ‖q‖‖b‖."""
    if max_norm <= 0:
        return 1.0
    return 2.0 ** math.floor(math.log2(math.sqrt(_FP16_PRODUCT_MAX) / max_norm))


# ---------------------------------------------------------------- the search


class Search:
    """The distinct rows sorted by (list, id) (``order``: their global ids), searchable in
    shards that fit the device budget."""

    def __init__(self, x: np.ndarray, order: np.ndarray, lims: np.ndarray, norms2: np.ndarray,
                 dev: Device, budget: int, say: Callable[[str], None]):  # fmt: skip
        """``norms2``: the rows' squared norms in the sorted order."""
        self.x, self.order, self.lims, self.dev, self.say = x, order, lims, dev, say
        self.nr, self.dim = order.size, x.shape[1]
        torch = dev.torch
        row_bytes = self.dim * torch.empty((), dtype=dev.dtype).element_size()
        per = max(1, int(budget // max(1, row_bytes)))
        self.shards = [(a, min(self.nr, a + per)) for a in range(0, self.nr, per)] or [(0, 0)]
        self.q_norms = np.sqrt(norms2.astype(np.float64))
        self.max_b = float(self.q_norms.max(initial=0.0))
        self.bn = torch.from_numpy(norms2.astype(np.float32)).to(dev.dev)
        self.held = None  # (first, end, device rows) of the shard on the device
        if len(self.shards) == 1:
            self._shard(0, self.nr)

    def _chunks(self, a: int, b: int):
        """``(first, end, float32 host rows)`` of sorted positions ``[a, b)``, a chunk at a
        time (a view where the positions are consecutive rows)."""
        for s in range(a, b, HOST_CHUNK_ROWS):
            e = min(b, s + HOST_CHUNK_ROWS)
            ids = self.order[s:e]
            if ids[-1] - ids[0] == e - s - 1:  # sorted and distinct: consecutive rows
                yield s, e, self.x[ids[0] : ids[-1] + 1]
            else:
                yield s, e, self.x[ids]

    def eps(self, qpos: np.ndarray) -> np.ndarray:
        return error_bound(self.dev.precision, self.dim, self.q_norms[qpos], self.max_b,
                           self.dev.scale, self.dev.out_unit)  # fmt: skip

    def _upload(self, a: int, b: int):
        torch = self.dev.torch
        out = torch.empty((b - a, self.dim), dtype=self.dev.dtype, device=self.dev.dev)
        for s, e, chunk in self._chunks(a, b):
            out[s - a : e - a] = self.dev.upload(chunk)
        return out

    def _shard(self, a: int, b: int):
        if self.held is None or self.held[:2] != (a, b):
            self.held = None  # the previous shard is released first
            self.held = (a, b, self._upload(a, b))
        return self.held[2]

    def _queries(self, qpos: np.ndarray):
        """Device rows of the queries at sorted positions ``qpos``."""
        a, b, rows = self.held
        if a == 0 and b == self.nr:  # every row is on the device
            return rows[self.dev.torch.from_numpy(qpos).to(self.dev.dev)]
        return self.dev.upload(self.x[self.order[qpos]])

    def topc(self, groups: list[tuple[int, int, np.ndarray]], qpos: np.ndarray, c: int):
        """For the queries ``qpos`` (sorted positions), their best ``c`` rows by approximate
        distance among the row ranges ``[a, b)`` of the ``groups`` ``(a, b, queries)`` that
        list them, in no order: (positions, ``‖b‖² − 2q·b`` as float32; ``-1``/``inf``
        where fewer)."""
        torch = self.dev.torch
        slot = np.full(self.nr, -1, np.int64)
        slot[qpos] = np.arange(qpos.size)
        heap_v = torch.full((qpos.size, c), float("inf"), device=self.dev.dev)
        heap_i = torch.full((qpos.size, c), -1, dtype=torch.int64, device=self.dev.dev)
        for s, (s0, s1) in enumerate(self.shards):
            mine = [(max(a, s0), min(b, s1), q) for a, b, q in groups if a < s1 and b > s0]
            if not mine:
                continue
            if len(self.shards) > 1:
                self.say(f"knn graph: torch search: shard {s + 1}/{len(self.shards)}")
            rows = self._shard(s0, s1)
            for a, b, q in mine:
                for t in range(0, q.size, Q_TILE):
                    qt = q[t : t + Q_TILE]
                    qrows = self._queries(qt)
                    at = torch.from_numpy(slot[qt]).to(self.dev.dev)
                    for u in range(a, b, B_TILE):
                        v = min(b, u + B_TILE)
                        part = self.dev.scores(qrows, rows[u - s0 : v - s0], self.bn[u:v])
                        got_v, got_i = torch.topk(part, min(c, v - u), dim=1, largest=False,
                                                  sorted=False)  # fmt: skip
                        _merge(torch, heap_v, heap_i, at, got_v, got_i + u)
                    del qrows
        return heap_i.cpu().numpy(), heap_v.cpu().numpy()

    def release(self) -> None:
        self.held = None


def _merge(torch, heap_v, heap_i, at, got_v, got_i) -> None:
    """Fold a block's top candidates into the heaps of the rows ``at`` (distinct)."""
    c = heap_v.shape[1]
    all_v = torch.cat([heap_v[at], got_v], dim=1)
    all_i = torch.cat([heap_i[at], got_i], dim=1)
    best_v, pick = torch.topk(all_v, c, dim=1, largest=False, sorted=False)
    heap_v[at] = best_v
    heap_i[at] = torch.gather(all_i, 1, pick)


def certified_top(search: Search, groups_for: Callable, qpos: np.ndarray, keep: int,
                  totals: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
    """Exact top-``keep`` of the queries ``qpos`` among the rows ``groups_for(queries)``
    lists for them (``totals``: how many rows that is per query): (global ids, float64
    squared distances) by (distance, id), and how many rows needed a second search."""
    ids = np.full((qpos.size, keep), -1, np.int64)
    d2 = np.full((qpos.size, keep), np.inf)
    todo, c, again = np.arange(qpos.size), WIDEN * keep, 0
    while todo.size:
        c_now = int(min(c, max(1, totals[todo].max())))
        pos, approx = search.topc(groups_for(qpos[todo]), qpos[todo], c_now)
        got_i, got_d, ok = _rerank(search, qpos[todo], pos, approx, keep, totals[todo])
        ids[todo[ok]], d2[todo[ok]] = got_i[ok], got_d[ok]
        todo, c = todo[~ok], 4 * c
        again += int(todo.size)
    return ids, d2, again


def _rerank(search: Search, qpos, pos, approx, keep: int, totals):
    """Exact re-ranking of the candidates on the CPU (the compiled engine's kernels, chunks
    on every core) and the certificate of each query."""
    x, order = search.x, search.order
    cand = np.where(pos >= 0, order[np.maximum(pos, 0)], -1)
    ids = np.full((qpos.size, keep), -1, np.int64)
    d2 = np.full((qpos.size, keep), np.inf)

    def kernel(lo: int, hi: int, _c: int) -> None:
        for a in range(lo, hi, HOST_CHUNK_ROWS):
            b = min(hi, a + HOST_CHUNK_ROWS)
            xq = x[order[qpos[a:b]]]
            exact = np.empty(cand[a:b].shape)
            scan._exact(xq, x, cand[a:b], exact, np.float64(1.0), x.shape[1])
            gid = np.where(cand[a:b] >= 0, cand[a:b], scan._NO_ID)
            scan._rank(cand[a:b], exact, gid, keep, ids[a:b], d2[a:b])

    n_chunks = max(1, min(64, qpos.size // 2048))
    run_chunks(kernel, qpos.size, n_chunks)
    worst = search.q_norms[qpos] ** 2 + approx.max(axis=1).astype(np.float64)
    ok = (pos.shape[1] >= totals) | (pos < 0).any(axis=1)  # every row it searches fetched
    ok |= d2[:, keep - 1] < worst - search.eps(qpos)
    return ids, d2, ok


# ---------------------------------------------------------------- IVF


def train_centroids(dev: Device, sample: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """k-means centroids (float32): seeded distinct initial rows, assignments by float32
    GEMMs on the device, centroid sums in float64 on the host (an emptied list keeps its
    centroid)."""
    rng = np.random.default_rng(seed)
    cent = sample[np.sort(rng.choice(sample.shape[0], nlist, replace=False))].copy()
    for _ in range(ivf.KMEANS_ITER):
        labels = nearest_lists(dev, sample, cent, 1)[:, 0]
        order = np.argsort(labels, kind="stable")
        held, first = np.unique(labels[order], return_index=True)
        sums = np.add.reduceat(sample[order].astype(np.float64), first, axis=0)
        counts = np.diff(np.append(first, labels.size))
        cent[held] = (sums / counts[:, None]).astype(np.float32)
    return cent


def nearest_lists(dev: Device, x: np.ndarray, centroids: np.ndarray, p: int,
                  rows: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The ``p`` nearest centroids of each row of ``x`` (of ``x[rows]``), nearest first, by
    float32 GEMMs on the device: int32."""
    torch = dev.torch
    cent = torch.from_numpy(np.ascontiguousarray(centroids)).to(dev.dev)
    cn = (cent.double() ** 2).sum(1).float()
    n = x.shape[0] if rows is None else rows.size
    out = np.empty((n, p), np.int32)
    for a in range(0, n, Q_TILE):
        block = x[a : a + Q_TILE] if rows is None else x[rows[a : a + Q_TILE]]
        q = torch.from_numpy(np.ascontiguousarray(block)).to(dev.dev)
        part = (q @ cent.T).mul_(-2.0).add_(cn)
        out[a : a + q.shape[0]] = torch.topk(part, p, dim=1, largest=False).indices.cpu().numpy()
    return out


def probe_groups(dev: Device, lims: np.ndarray, probes: np.ndarray):
    """``groups_for(queries)``: each list's row range with the queries (sorted positions)
    that probe it (``probes``: each sorted position's lists), grouped by a stable sort on
    the device."""
    torch = dev.torch
    nlist = lims.size - 1

    def groups_for(qpos: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        lst = torch.from_numpy(probes[qpos]).to(dev.dev).reshape(-1)  # int32: half the bytes
        lst, by = torch.sort(lst, stable=True)
        who = torch.from_numpy(qpos.astype(np.int32 if lims[-1] < 2**31 else np.int64))
        who = who.to(dev.dev).repeat_interleave(probes.shape[1])[by]
        counts = torch.bincount(lst, minlength=nlist).cpu().numpy()
        who = who.cpu().numpy()
        start = np.concatenate([[0], np.cumsum(counts)])
        return [(int(lims[g]), int(lims[g + 1]), who[start[g] : start[g + 1]].astype(np.int64))
                for g in np.flatnonzero(counts)]  # fmt: skip

    return groups_for


# ---------------------------------------------------------------- the build


def build(blocks, *, k: int, kind: str, recall: float, seed: int, device: str, limit: int,
          store, say, nlist, nprobe, precision: str | None = None,
          device_budget: int | None = None) -> tuple:  # fmt: skip
    """The graph of ``blocks`` with the torch engine on ``device`` ("cpu"/"cuda"):
    ``(graph, info, timings, each row's IVF list or None)``, ``info`` as the compiled
    engine's. ``precision`` of the
    GEMMs (default fp16 on CUDA, fp32 on the CPU); ``device_budget``: bytes of rows held on
    the device at once (default: a share of its free memory, or of the memory limit)."""
    torch = require_torch()
    precision = precision or ("fp16" if device == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise D2ScaleError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(name: str):
        say(f"knn graph: {name}")
        t0 = time.perf_counter()
        yield
        if device == "cuda":
            torch.cuda.synchronize()
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 3)

    sizes = [int(s) for s in blocks.sizes]
    n, dim = sum(sizes), int(blocks.dim)
    _check_host_memory(n, dim, limit)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with _exact_matmuls(torch):
        with stage("load"):
            x = _load_rows(blocks, n, dim)
        fp_rows = np.sort(np.random.default_rng(0).choice(n, _fp_rows(blocks, n), replace=False))
        fingerprint = rules.source_fingerprint(blocks, x[fp_rows])
        nlist = 1 if kind == "exact" else min(nlist or ivf.choose_nlist(n), n)
        params = {"engine": "torch", "device": device, "index": kind, "n_neighbors": k,
                  "recall": recall, "seed": seed, "sizes": sizes, "dim": dim, "nlist": nlist,
                  "nprobe": nprobe}  # fmt: skip
        if store is not None:
            store.begin(fingerprint, params)
        with stage("dedup"):
            rep, norms2 = _scan_rows(x)
            reps = np.flatnonzero(rep == np.arange(n))
        dev = Device(torch, device, precision)
        if precision == "fp16":
            dev.scale = _fp16_scale(float(np.sqrt(norms2.max(initial=0.0))))
        budget = device_budget or _device_budget(torch, device, limit, n, dim)
        model = store.load_model() if store is not None else None
        with stage("train"):
            centroids, tuned = _model(dev, x, reps, kind, nlist, seed, model)
        with stage("assign"):
            cap = min(nlist, ivf.PROBE_CAP if tuned is None else tuned["nprobe"])
            probes_r = nearest_lists(dev, x, centroids, cap, reps) if nlist > 1 else \
                np.zeros((reps.size, 1), np.int32)  # fmt: skip
            lists_r = probes_r[:, 0]
            by = np.lexsort((reps, lists_r))
            order, probes = reps[by], probes_r[by]
            lims = np.searchsorted(lists_r[by], np.arange(nlist + 1)).astype(np.int64)
        with stage("upload"):
            search = Search(x, order, lims, norms2[order], dev, budget, say)
        if tuned is None:
            with stage("tune"):
                tuned = _tune(search, probes, rep, k, recall, nprobe, seed, nlist)
            if store is not None:
                store.save_model({"centroids": centroids}, tuned)
        with stage("search"):
            p = tuned["nprobe"]
            groups_for = probe_groups(dev, lims, np.ascontiguousarray(probes[:, :p]))
            totals = np.diff(lims)[probes[:, :p]].sum(axis=1)
            ids_s, d2_s, again, reused = _search_blocks(search, groups_for, totals, k + 1,
                                                        store, say)  # fmt: skip
        search.release()
        with stage("expand"):
            nbr = np.full((n, k + 1), -1, np.int64)
            d2 = np.full((n, k + 1), np.inf)
            nbr[order], d2[order] = ids_s, d2_s
            graph = rules.finish(rep, nbr, d2, k)
    lists = None
    if kind == "ivf":
        lists = np.empty(n, np.int32)
        lists[order] = np.repeat(np.arange(nlist, dtype=np.int32), np.diff(lims))
        lists = lists[rep]
    info = {**tuned, "nlist": nlist, "pca_dim": None, "unique_rows": int(reps.size),
            "n": n, "k": k, "dim": dim, "partitions": len(sizes), "memory_limit": limit,
            "shards": len(search.shards), "device_budget_bytes": int(budget),
            "precision": precision, "rows_searched_again": again,
            "search_blocks_reused": reused, "fingerprint": fingerprint,
            "peak_rss_bytes": peak_rss_bytes(), **_device_facts(torch, device)}  # fmt: skip
    return graph, info, timings, lists


def _search_blocks(search: Search, groups_for, totals, keep: int, store, say) -> tuple:
    """:func:`certified_top` of every row, ``QUERY_BLOCK`` rows at a time (what the device
    holds per query is bounded), each block saved as a part of the store and taken from
    there when a killed build resumes: (ids, squared distances, rows searched again, blocks
    reused)."""
    ids = np.full((search.nr, keep), -1, np.int64)
    d2 = np.full((search.nr, keep), np.inf)
    again = reused = 0
    starts = range(0, search.nr, QUERY_BLOCK)
    for b, a in enumerate(starts):
        q = np.arange(a, min(search.nr, a + QUERY_BLOCK))
        name = f"torch-search-{b:05d}"
        got = store.load_part(name, ("rows", "ids", "d2")) if store is not None else None
        if got is not None and np.array_equal(got["rows"], search.order[q]):
            ids[q], d2[q] = got["ids"], got["d2"]
            reused += 1
            continue
        if len(starts) > 1:
            say(f"knn graph: search: block {b + 1}/{len(starts)}")
        ids[q], d2[q], more = certified_top(search, groups_for, q, keep, totals[q])
        again += more
        if store is not None:
            store.save_part(name, rows=search.order[q], ids=ids[q], d2=d2[q])
    return ids, d2, again, reused


def _fp_rows(blocks, n: int) -> int:
    own = getattr(blocks, "fingerprint", None) is not None
    return 0 if own else min(n, rules.FINGERPRINT_ROWS)


def _check_host_memory(n: int, dim: int, limit: int) -> None:
    need = n * dim * 4
    if need > limit:
        raise D2ScaleError(
            f"graph engine 'torch' holds all {n:,} embeddings in host memory "
            f"({need / 2**30:.1f} GiB float32), more than the memory limit "
            f"({limit / 2**30:.1f} GiB); raise --memory-limit or use --graph-engine compiled"
        )


def _load_rows(blocks, n: int, dim: int) -> np.ndarray:
    """Every row as one float32 array (read a chunk at a time; an in-memory float32 array
    of blocks, :class:`d2scale.types.ArrayBlocks`, is used as it is)."""
    own = getattr(blocks, "array", None)
    if isinstance(own, np.ndarray) and own.dtype == np.float32 and own.shape == (n, dim) \
            and own.flags.c_contiguous:  # fmt: skip
        return own
    x = np.empty((n, dim), np.float32)
    at = 0
    for p, size in enumerate(blocks.sizes):
        for s, chunk in shards.iter_chunks(blocks, p):
            x[at + s : at + s + chunk.shape[0]] = chunk
        at += int(size)
    return x


def _scan_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dedup.representatives` of the rows and their squared norms (float32 sums, as
    the compiled engine's), in chunks on every core."""
    hashes = np.empty((x.shape[0], 2), np.uint64)
    norms2 = np.empty(x.shape[0], np.float32)

    def kernel(lo: int, hi: int, _c: int) -> None:
        for a in range(lo, hi, HOST_CHUNK_ROWS):
            b = min(hi, a + HOST_CHUNK_ROWS)
            hashes[a:b] = dedup.row_hashes(x[a:b])
            norms2[a:b] = scan.norms2(x[a:b])

    run_chunks(kernel, x.shape[0], max(1, min(64, x.shape[0] // HOST_CHUNK_ROWS)))
    return dedup.representatives(hashes), norms2


def _device_budget(torch, device: str, limit: int, n: int, dim: int) -> int:
    """Bytes of rows the device holds at once: a share of its free memory (CUDA) or what
    the memory limit leaves beside the host's float32 rows (CPU)."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(DEVICE_MEMORY_FRACTION * free)
    return max(1, (limit - n * dim * 4) // 2)


def _device_facts(torch, device: str) -> dict:
    if device != "cuda":
        return {"device_name": "cpu"}
    return {"device_name": torch.cuda.get_device_name(),
            "peak_device_bytes": int(torch.cuda.max_memory_allocated())}  # fmt: skip


def _model(dev, x, reps, kind, nlist, seed, model):
    """(centroids, tuned or None): restored, exact (one list), or trained."""
    if model is not None:
        arrays, tuned = model
        return arrays["centroids"], tuned
    if kind == "exact":
        tuned = {"probing": "row", "nprobe": 1, "recall": 1.0,
                 "recall_method": "exact search (certified)"}  # fmt: skip
        return np.zeros((1, x.shape[1]), np.float32), tuned
    perm = np.random.default_rng(seed).permutation(reps.size)
    train = reps[np.sort(perm[: min(reps.size, rules.TRAIN_ROWS_PER_LIST * nlist)])]
    return train_centroids(dev, x[train], nlist, seed), None


def _tune(search: Search, probes, rep, k: int, recall: float, nprobe, seed: int, nlist: int):
    """The cheapest per-row ``nprobe`` whose recall@k on held-out rows (minus one standard
    error) reaches the target, from their exact neighbours and the lists alone."""
    n = rep.shape[0]
    n_eval = min(search.nr, int(np.clip(rules.EVAL_BUDGET / n, *rules.EVAL_ROWS)))
    rng = np.random.default_rng(seed + 1)
    qpos = np.sort(rng.choice(search.nr, n_eval, replace=False))
    found, d2, _ = certified_top(search, lambda q: [(0, search.nr, q)], qpos, k + 1,
                                 np.full(qpos.size, search.nr))  # fmt: skip
    truth = shards.drop_self(found, d2, search.order[qpos], k)[0]
    lists = np.empty(n, np.int64)
    sorted_lists = np.repeat(np.arange(nlist), np.diff(search.lims))
    lists[search.order] = sorted_lists
    lists = lists[rep]
    cap = probes.shape[1]
    grid = [(p, k + 1) for p in ([nprobe] if nprobe else ivf.nprobe_grid(nlist)) if p <= cap]
    curve = ivf.recall_from_probes(truth, found, probes[qpos], np.arange(n_eval), lists,
                                   nlist, grid)  # fmt: skip
    mode, curve, best, ok = rules.pick_setting({"row": curve}, {pm: pm[0] for pm in grid}, recall)
    return {
        "probing": mode,
        "nprobe": best[0],
        "recall": round(curve[best][0], 5),
        "recall_se": round(curve[best][1], 5),
        "recall_target": recall,
        "recall_reached": bool(ok),
        "recall_method": f"recall@{k} of {n_eval} seeded distinct rows against exact search: "
        "each row's search is exact over the lists it probes, so what it finds follows from "
        "the rows' lists and their exact neighbours; the smallest nprobe whose recall minus "
        "one standard error reaches the target",
        "n_eval": n_eval,
        "recall_curve": {
            f"nprobe={p}": round(r, 5) for (p, _), (r, _) in curve.items() if p <= 2 * best[0]
        },  # fmt: skip
    }

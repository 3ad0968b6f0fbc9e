"""``build_knn_graph``: the kNN graph of a pool, exact or IVF, streamed through Dask tasks.

Stages (each timed, reported through ``progress`` and recorded for ``run.json``):

``sample``  seeded rows for the input fingerprint, IVF training and recall evaluation;
``train``   (IVF) PCA and k-means lists; meanwhile a task bounds the evaluation rows'
            neighbour distances by their neighbours in the training sample;
``assign``  one pass over the pool: row hashes (exact duplicates), every row's list and
            nearest lists, and the exact neighbours of the evaluation rows (only candidates
            within the bound are re-ranked);
``tune``    (IVF) the cheapest probing (each row's own nearest lists, or its list's) and
            ``nprobe`` whose recall@k on the held-out evaluation rows (minus one standard
            error) reaches the target — computed from the lists alone;
``search``  shard by shard: tasks gather the shard's rows, then search its lists in chunks;
``rerank``  (when the full rows do not fit the memory limit) the search-space candidates
            re-ranked by exact distance, block by block, tasks streaming the pool;
``write``   the consolidated graph (with ``workdir``).

Only distinct vectors are searched (:mod:`d2scale.graph.dedup`); every search is exact over
the rows it probes (:mod:`d2scale.graph.scan`), so the graph does not depend on the
partitioning, the shards, the chunks or the number of workers. Exact search goes through a
PCA space where that is cheaper (:mod:`d2scale.graph.small`, the same graph). With
``workdir`` a killed build resumes: the model (saved once trained, again once tuned), each
partition's assignment (with its share of the evaluation), each search chunk and each
re-ranked block are checkpoints, verified before reuse (a damaged one or one of another
build is recomputed), and a directory holding another input or other parameters is refused.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np

from d2scale.backends import (
    bound_heap_growth,
    peak_rss_bytes,
    release_free_pages,
    resolve_device,
    rss_bytes,
)
from d2scale.errors import D2ScaleError
from d2scale.graph import (
    dedup,
    ivf,
    listrows,
    probed,
    rerank,
    scan,
    shards,
    small,
    torch_engine,
)
from d2scale.graph.rules import (
    EVAL_BUDGET,
    EVAL_ROWS,
    FINGERPRINT_ROWS,
    TRAIN_ROWS_PER_LIST,
    finish,
    pick_setting,
    source_fingerprint,
)
from d2scale.graph.store import GraphStore, save_graph
from d2scale.io import save_npy
from d2scale.params import DEVICES, PARAMS
from d2scale.progress import plural
from d2scale.types import EmbeddingBlocks, KnnGraph

AUTO_EXACT_MAX = 50_000  # "auto" picks exact search up to this many rows (when they fit)
EVAL_CANDIDATES = 4  # search-space candidates per k+1 kept for the evaluation rows
TASKS_PER_THREAD = 8  # search chunks per cluster thread and shard (load balance)
INDEXES = PARAMS["index"].choices
RERANK_CANDIDATE_BYTES = 80  # per query and candidate in a re-ranking task (ids, order, d²)
RERANK_BLOCK_ROWS = 1 << 19  # queries per re-ranking task at most (each reads the pool)
RERANK_MIN_ROWS = 1024  # ... and at least (each task streams the pool: a few MB more at most)
LISTS_BLOCK_ROWS = 1 << 17  # queries per re-ranking task reading the rows in list order
# write the rows in list order where streaming would read the pool this often (else warn):
# twice where the source's reads are costly (deflated or remote: two workers streaming a
# deflated 400k pool twice, re-rank 23.9 s against 11.6 s in list order), four times where
# they are cheap (200k rows in memory, 2 reads: 2.3 s streamed against 4.2 s in list order)
LISTS_MIN_READS = 4
LISTS_MIN_READS_COSTLY = 2
DISK_MARGIN = 1 << 30  # disk left free beside the rows in list order
MEMORY_FRACTION = 0.5  # default budget: this share of the currently available memory
SEARCH_CALLER_BYTES = 24  # per row: the pool's uids and scores, held by select meanwhile
SEARCH_TASK_ROW_BYTES = 24  # a search task's per-query ids (+ 8 per probe, 24 per candidate)
MIN_CHUNK_ROWS = 1024  # a search task answers at least this many queries
TASK_SHARE_MIN = 16  # one shard of every row only while the search tasks keep 1/16 of memory
GATHER_WARN = 4  # warn when the search shards gather more than this many times the rows


def build_knn_graph(
    blocks: EmbeddingBlocks,
    *,
    n_neighbors: int,
    index: str = "auto",
    recall: float = 0.95,
    memory_limit: int | None = None,
    device: str = "auto",
    seed: int = 0,
    client=None,
    workdir: str | None = None,
    progress: Callable[[str], None] | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    pca: bool = True,
    meta: dict | None = None,
    graph_engine: str = "auto",
    engine_options: dict | None = None,
) -> tuple[KnnGraph, dict]:
    """The directed kNN graph of ``blocks`` (SPEC §1) and a dict describing how it was built.

    ``index``: "exact", "ivf", or "auto" (exact up to ``AUTO_EXACT_MAX`` rows when they fit
    the memory limit). IVF tunes
    ``nprobe`` on held-out rows until recall@k reaches ``recall`` (``nprobe`` fixes it
    instead); ``nlist`` defaults to ~1.5·√N; ``pca``: search in a PCA space keeping 90% of
    the variance when that halves the dimensions at least (candidates re-ranked exactly).
    ``memory_limit`` (bytes, default half the available memory) bounds what the build
    holds: shards are sized to it. ``client`` is a
    ``distributed.Client`` (None: an in-process one); ``workdir`` makes the build resumable
    and writes the graph directory. ``meta`` (facts about the source) is added to the
    returned dict and to ``meta.json``. ``graph_engine``: "compiled", "torch"
    (:mod:`d2scale.graph.torch_engine`: GEMMs on the GPU, or with ``device="cpu"`` the same
    code on the CPU; no PCA, ``client`` unused) or "auto" (torch where torch sees a CUDA GPU
    and ``device`` is not "cpu"); ``engine_options``: the torch engine's ``precision`` and
    ``device_budget``.
    """
    n, k = _validate(blocks, n_neighbors, index, recall, device, memory_limit, nprobe, nlist)
    engine_used, torch_device, why = torch_engine.resolve_engine(graph_engine, device)
    kind = index if index != "auto" else ("exact" if n <= AUTO_EXACT_MAX else "ivf")
    limit = memory_limit or default_memory_limit()
    facts = {"graph_engine": engine_used, "graph_engine_reason": why}
    if engine_used == "torch":
        store = GraphStore(workdir) if workdir else None
        graph, info, timings, lists = torch_engine.build(
            blocks, k=k, kind=kind, recall=recall, seed=seed, device=torch_device, limit=limit,
            store=store, say=progress or (lambda msg: None), nlist=nlist, nprobe=nprobe,
            **(engine_options or {}),
        )  # fmt: skip
        info = {"index": kind, "device": torch_device, **facts, **info, **(meta or {})}
        if store is not None:
            t0 = time.perf_counter()
            save_graph(store.gdir, graph, {**info, "timings": timings}, lists)
            timings["write"] = round(time.perf_counter() - t0, 3)
        return graph, {**info, "timings": timings}
    device_used = _device(device)
    bound_heap_growth()
    build = _Build(blocks, k, recall, seed, device_used, progress, workdir, limit)
    try:
        with shards.task_client(client) as cl:
            build.client = cl
            build.bf = cl.scatter(blocks, broadcast=True, hash=False)
            if index == "auto" and kind == "exact" and not build.one_shard():
                kind = "ivf"  # exact search holds every row: too many for the memory limit
            graph, info = build.run(kind, nlist, nprobe, pca)
        info = {"index": kind, "device": device_used, **facts, **info, **(meta or {})}
        info["peak_rss_bytes"] = peak_rss_bytes()
        if build.store is not None:
            build.write(graph, info)
    finally:
        build.drop_spill(done=build.store is None or build.finished)
    return graph, {**info, "timings": build.timings}


def default_memory_limit() -> int:
    """Bytes a build may use by default."""
    import psutil

    return int(MEMORY_FRACTION * psutil.virtual_memory().available)


class _Build:
    """State of one build: inputs, Dask client, store, timings."""

    def __init__(self, blocks, k, recall, seed, device, progress, workdir, limit):
        self.blocks, self.k, self.recall, self.seed, self.device = blocks, k, recall, seed, device
        self.sizes = [int(s) for s in blocks.sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.n, self.dim = int(self.offsets[-1]), int(blocks.dim)
        self.say = progress or (lambda msg: None)
        self.store = GraphStore(workdir) if workdir else None
        # the limit bounds what the build adds to what the process holds before it
        # (interpreter, libraries, the caller's arrays), which is recorded beside it
        self.limit, self.held_before = limit, rss_bytes()
        self.timings: dict[str, float] = {}
        self.client = self.bf = self.projection = None
        self.kept = self.spill = None
        self.rows_dir = self.rerank_from = self.rerank_why = None
        self.keep_mode = ""
        self.kind, self.space_dim = "", None
        self.gathered_rows, self.unique_rows = None, 0
        self.finished = False

    @contextmanager
    def stage(self, name: str):
        """Time a stage. BLAS and faiss use one thread per caller throughout: tasks run side
        by side, and the driver's own work (PCA, k-means, tuning) is small — multi-threaded
        it only adds spin-waiting when the machine is busy."""
        self.say(f"knn graph: {name}")
        t0 = time.perf_counter()
        with _one_thread():
            yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)

    def submit(self, fn, *args, **kwargs):
        return self.client.submit(fn, *args, pure=False, **kwargs)

    @property
    def threads(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    # ------------------------------------------------------------ the build
    def run(self, kind: str, nlist, nprobe, pca: bool) -> tuple[KnnGraph, dict]:
        if kind == "exact":
            nlist, nprobe = 1, 1
            self._check_exact_fits()
        self.kind = kind
        nlist = min(nlist or ivf.choose_nlist(self.n), self.n)
        n_train = 0 if kind == "exact" else min(self.n, TRAIN_ROWS_PER_LIST * nlist)
        n_eval = 0 if kind == "exact" else min(self.n, int(np.clip(EVAL_BUDGET / self.n,
                                                                   *EVAL_ROWS)))  # fmt: skip
        params = {"index": kind, "n_neighbors": self.k, "recall": self.recall, "seed": self.seed,
                  "sizes": self.sizes, "dim": self.dim, "nlist": nlist, "nprobe": nprobe,
                  "pca": pca}  # fmt: skip
        with self.stage("sample"):
            fingerprint, manifest, model, sample = self.start(params, n_train, n_eval)
        x_eval, eval_ids = sample[1:]
        bound = None
        if model is not None:
            projection, centroids, bound, tuned = _restore(model)
        elif kind == "exact":
            projection, centroids = None, np.zeros((1, self.dim), np.float32)
            tuned = {"nprobe": 1, "candidates": self.k + 1, "recall": 1.0,
                     "recall_method": "exact search (certified)"}  # fmt: skip
        else:
            with self.stage("train"):
                projection, centroids, bound = self.train(sample, nlist, pca)
            if self.store is not None:  # a checkpoint: a rerun skips the training and sample
                arrays = _model_arrays(projection, centroids, bound)
                self.store.save_model({**arrays, "eval_rows": x_eval}, None)
            tuned = None
        del sample
        self.projection = projection
        with self.stage("assign"):
            evaluate = (x_eval, bound) if tuned is None else None
            hashes, lists, evals = self.assign(centroids, evaluate)
            rep = dedup.representatives(hashes)
            del hashes
        if tuned is None:
            with self.stage("tune"):
                tuned = self.tune(centroids, lists, rep, evals, (eval_ids, x_eval), nprobe)
            if self.store is not None:
                self.store.save_model(_model_arrays(projection, centroids, bound), tuned)
        if not tuned.get("recall_reached", True):  # recorded in the graph's facts too
            r, se = tuned["recall"], tuned.get("recall_se", 0.0)
            self.say(f"knn graph: warning: recall@k {r:.3f} ± {se:.3f} (one standard error) "
                     f"is not clearly above the target {self.recall:g} at the setting "
                     f"searched (nprobe {tuned['nprobe']}); a lower --recall or --index exact "
                     "avoids this")  # fmt: skip
        with self.stage("search"):
            nbr, d2 = self.search(centroids, lists, rep, tuned, manifest.get("plan"))
        if d2 is None:  # search-space candidates: re-ranked in a separate, streamed pass
            with self.stage("rerank"):
                nbr, d2 = self.rerank(nbr, rep == np.arange(self.n), lists, centroids)
        with self.stage("expand"):
            graph = finish(rep, nbr, d2, self.k)
        self.lists = lists if kind == "ivf" else None
        unique = int((rep == np.arange(self.n)).sum())
        pca_dim = None if projection is None else projection.dim
        info = {**tuned, "nlist": nlist, "pca_dim": pca_dim, "unique_rows": unique,
                **self.describe(fingerprint)}  # fmt: skip
        return graph, info

    # ------------------------------------------------------------ stages
    def start(self, params: dict, n_train: int, n_eval: int) -> tuple:
        """Fingerprint, manifest, saved model (or None) and the sample rows still needed:
        (training rows, evaluation rows, evaluation ids). A source with its own fingerprint
        opens the store first, so a resumed build reads no training rows once the model is
        saved, nor evaluation rows once it is tuned."""
        own = getattr(self.blocks, "fingerprint", None)
        manifest, model = ({}, None) if own is None else self.open_store(str(own), params)
        fp_ids, train, eval_ids = self.sample_ids(n_train, n_eval, own is None)
        saved = _saved_eval_rows(model, (eval_ids.size, self.dim))
        need_eval = (model is None or model[1] is None) and saved is None
        x_fp, x_train, x_eval = self.read_rows(
            [fp_ids, train if model is None else train[:0], eval_ids if need_eval else train[:0]]
        )
        fingerprint = str(own) if own is not None else source_fingerprint(self.blocks, x_fp)
        if own is None:
            manifest, model = self.open_store(fingerprint, params)
        x_eval = saved if saved is not None else x_eval
        return fingerprint, manifest, model, [x_train, x_eval, eval_ids]

    def open_store(self, fingerprint: str, params: dict) -> tuple[dict, tuple | None]:
        """(manifest, saved model or None) of the store; ``({}, None)`` without one."""
        if self.store is None:
            return {}, None
        manifest = self.store.begin(fingerprint, params)
        return manifest, self.store.load_model()

    def sample_ids(self, n_train: int, n_eval: int, fingerprint: bool) -> tuple:
        """Seeded rows for the fingerprint (when ``fingerprint``), the training and the
        evaluation (held out when possible), each sorted."""
        n_fp = min(self.n, FINGERPRINT_ROWS) if fingerprint else 0
        fp_rows = np.random.default_rng(0).choice(self.n, n_fp, replace=False)
        perm = np.random.default_rng(self.seed).permutation(self.n)
        train = np.sort(perm[:n_train])
        held = perm[n_train:] if self.n - n_train >= n_eval else perm
        return np.sort(fp_rows), train, np.sort(held[:n_eval])

    def read_rows(self, wanted: list[np.ndarray]) -> list[np.ndarray]:
        """The rows of each sorted id array of ``wanted``, read in one pass over the pool."""
        xs = [np.empty((r.size, self.dim), np.float32) for r in wanted]
        rows = np.unique(np.concatenate(wanted).astype(np.int64))
        by_part = shards.part_rows(self.offsets, rows)
        futs = {p: self.submit(shards.take_rows, self.bf, p, local) for p, local in by_part.items()}
        # copied into place: no concatenation
        for p, got in self._as_completed(futs, "sample", "partitions"):
            ids = by_part[p] + self.offsets[p]
            for r, x in zip(wanted, xs, strict=True):
                a, b = np.searchsorted(r, [ids[0], ids[-1] + 1])
                x[a:b] = got[np.searchsorted(ids, r[a:b])]
        return xs

    def train(self, sample: list, nlist: int, pca: bool) -> tuple:
        """(PCA or None, k-means centroids, the evaluation rows' neighbour bound or None) from
        the ``sample`` of :meth:`start` (its training rows are dropped from it); a task
        computes the bound meanwhile."""
        x_train, x_eval = sample.pop(0), sample[0]
        if pca:
            self.say(f"knn graph: train: PCA of {min(len(x_train), ivf.PCA_ROWS):,} rows")
        projection = ivf.fit_pca(x_train) if pca else None
        bound = None
        if projection is not None:  # a task bounds the evaluation rows' neighbours
            bound = self.submit(shards.eval_bound,
                                *self.client.scatter([x_eval, x_train], hash=False),
                                self.k + 1)  # fmt: skip
            x_train = projection(x_train)  # meanwhile: the full sample is dropped
        self.say(f"knn graph: train: k-means of {len(x_train):,} rows into {nlist:,} lists")
        centroids = ivf.train_centroids(x_train, nlist, self.seed)
        return projection, centroids, None if bound is None else bound.result()

    def assign(self, centroids, evaluate):
        """Hashes, lists and nearest lists (per-row probes) of every row (from the store
        where saved), and the evaluation rows' exact neighbours and search-space candidates
        (when ``evaluate`` — the evaluation rows and the bound of their neighbours' distances
        or None — is given). Rows are kept for the search where they fit."""
        hashes = np.empty((self.n, 2), np.uint64)
        n_probes = min(ivf.PROBE_FIRST, ivf.probe_cap(centroids.shape[0]))
        self.probes = np.empty((self.n, n_probes), ivf.list_dtype(centroids.shape[0]))
        x_eval, bound = evaluate or (np.empty((0, self.dim), np.float32), None)
        mode = self.keep_mode = self._keep_mode()
        self.kept = {} if mode == "kept" else None
        if mode == "spill":
            self.spill = self.store.parts_dir if self.store else tempfile.mkdtemp(prefix="d2scale-")
        sent = self.client.scatter([self.projection, centroids, x_eval, bound], broadcast=True,
                                   hash=False)  # fmt: skip
        keep = (self.k + 1, EVAL_CANDIDATES * (self.k + 1))
        futs, evals = {}, []
        for p, (a, b) in enumerate(zip(self.offsets[:-1], self.offsets[1:], strict=True)):
            saved = self._saved_assignment(p, int(b - a), n_probes, x_eval.shape[0], keep)
            if saved is not None:
                hashes[a:b], self.probes[a:b] = saved["hashes"], saved["probes"]
                evals.extend(_eval_share(saved))
                continue
            futs[p] = self.submit(shards.assign_part, self.bf, p, int(a), *sent, keep,
                                  n_probes, bool(mode))  # fmt: skip
        for p, res in self._as_completed(futs, "assign", "partitions"):
            a, b = self.offsets[p], self.offsets[p + 1]
            hashes[a:b], self.probes[a:b] = res["hashes"], res["probes"]
            share = _eval_arrays(res, x_eval.shape[0], keep)
            evals.extend(_eval_share(share))
            if self.spill is not None:  # written before the part that says it is done
                save_npy(self._spill_path(p), res["rows"])
            if self.store is not None:
                self.store.save_part(f"assign-{p:05d}", hashes=res["hashes"],
                                     probes=res["probes"], **share)  # fmt: skip
            if self.kept is not None:
                self.kept[p] = futs[p]
        return hashes, self.probes[:, 0].astype(np.int32), evals

    def _saved_assignment(
        self, p: int, rows: int, n_probes: int, n_eval: int, keep: tuple[int, int]
    ) -> dict | None:
        """Partition ``p``'s saved assignment (with its share of the evaluation when
        ``n_eval`` rows are evaluated, and its spilled rows where they spill), or None."""
        if self.store is None:
            return None
        names = ("hashes", "probes") + (EVAL_KEYS if n_eval else ())
        d_s = self.dim if self.projection is None else self.projection.dim

        def whole(got: dict) -> bool:
            ok = got["hashes"].shape == (rows, 2) and got["probes"].shape == (rows, n_probes)
            if n_eval:
                ok &= all(got[f"{w}_{t}"].shape == (n_eval, c) for w, c in zip(
                    ("truth", "cands"), keep, strict=True) for t in ("ids", "d2"))  # fmt: skip
            return ok and (self.spill is None or _npy_shape(self._spill_path(p)) == (rows, d_s))

        return self.store.load_part(f"assign-{p:05d}", names, whole)

    def tune(self, centroids, lists, rep, evals, eval_rows, nprobe) -> dict:
        """Recall@k of the evaluation rows for each (nprobe, candidates) from the lists and
        exact neighbours alone; the cheapest setting whose recall minus one standard error
        reaches the target."""
        from d2scale.graph.scan import merge

        nlist, k1 = centroids.shape[0], self.k + 1
        eval_ids, x_eval = eval_rows
        y_eval = x_eval if self.projection is None else self.projection(x_eval)
        eval_probes = ivf.nearest_lists(y_eval, centroids, ivf.probe_cap(nlist))
        ids, d2 = merge([e[0] for e in evals], k1)
        truth = rep[np.maximum(shards.drop_self(ids, d2, eval_ids, self.k)[0], 0)]
        truth[ids[:, :1].repeat(self.k, 1) < 0] = -1  # no padding expected; kept for safety
        cands, _ = merge([e[1] for e in evals], EVAL_CANDIDATES * k1)
        cands = _first_reps(cands, rep)
        m_opts = [k1] if self.projection is None else [k1 + 4, 2 * k1, 3 * k1, 4 * k1]
        probes = [nprobe] if nprobe else ivf.nprobe_grid(nlist)
        cap = eval_probes.shape[1]
        grid = [(p, m) for p in probes for m in m_opts]
        by_row = [(p, m) for p, m in grid if p <= cap]
        d_s = self.dim if self.projection is None else self.projection.dim
        rerank = 0 if self.projection is None else 2 * self.dim
        cost = {pm: pm[0] * self.n / nlist * d_s + pm[1] * rerank for pm in grid}
        curves = {
            "row": ivf.recall_from_probes(
                truth, cands, eval_probes, np.arange(len(eval_ids)), lists, nlist, by_row
            )
        }
        # probing by list centroids only where it would cost less than per-row probing's pick
        row_ok = [cost[pm] for pm, (r, se) in curves["row"].items() if r - se >= self.recall]
        by_list = [pm for pm in grid if cost[pm] < min(row_ok, default=np.inf)]
        if by_list:
            curves["list"] = ivf.recall_curve(truth, cands, lists[eval_ids], lists, centroids,
                                              by_list)  # fmt: skip
        mode, curve, best, ok = pick_setting(curves, cost, self.recall)
        return {
            "probing": mode,
            "nprobe": best[0],
            "candidates": best[1],
            "recall": round(curve[best][0], 5),
            "recall_se": round(curve[best][1], 5),
            "recall_target": self.recall,
            "recall_reached": bool(ok),
            "recall_method": f"recall@{self.k} of {len(eval_ids)} held-out seeded rows against "
            "exact search: the search takes the exact search-space top candidates of the "
            "probed lists, so what it finds follows from the rows' lists and their exact "
            "neighbours; the cheapest setting whose recall minus one standard error reaches "
            "the target (each row probing the lists nearest to itself, 'row', or to its "
            "list's centroid, 'list')",
            "n_eval": len(eval_ids),
            "recall_curve": {
                f"nprobe={p},candidates={m}": round(r, 5)
                for (p, m), (r, _) in curve.items()
                if p <= 2 * best[0]
            },  # fmt: skip
        }

    def search(self, centroids, lists, rep, tuned, plan):
        """Top-(k+1) of every distinct row among its probed lists."""
        nlist = centroids.shape[0]
        is_rep = rep == np.arange(self.n)
        sizes = np.bincount(lists[is_rep], minlength=nlist)
        self.unique_rows = int(sizes.sum())
        row_probes, table = self.probe_tables(centroids, lists, is_rep, tuned)
        self.probes = None
        if plan is None:
            probe_cols = 0 if row_probes is None else row_probes.shape[1]
            plan = self.plan(centroids, table, sizes, tuned["candidates"], probe_cols)
            if self.store is not None:
                self.store.save_plan(plan)
        self.report(plan, table.shape[1])
        by_row = tuned.get("probing") == "row"
        self.n_shards = len(plan["shards"])
        self.shard_bytes = (plan.get("largest_shard_bytes"), plan.get("shard_budget_bytes"))
        self.gathered_rows = plan.get("gathered_rows")
        self.rerank_blocks = plan.get("rerank_blocks")
        self.rerank_from = plan.get("rerank_from", "pool")
        self.rerank_why = plan.get("rerank_from_reason")
        split = self.rerank_blocks is not None
        keep = self.k + 1
        width, names = (tuned["candidates"], ("q", "cand")) if split else (keep, ("q", "nbr", "d2"))
        nbr = np.full((self.n, width), -1, np.int32 if split and self.n < 2**31 else np.int64)
        d2 = None if split else np.full((self.n, keep), np.inf)
        chunk = 0
        list_rows = functools.cache(lambda: _rows_by_list(is_rep, lists, nlist))
        task = probed.search_rows if by_row else shards.search_lists
        t_f = self.client.scatter(row_probes if by_row else table, broadcast=True, hash=False)
        for s, (shard_lists, items) in enumerate(zip(plan["shards"], plan["chunks"], strict=True)):
            todo = {}
            for c, chunk_items in enumerate(items, chunk):
                got = self._saved_chunk(c, chunk_items, names, width, list_rows)
                if got is None:
                    todo[c] = chunk_items
                elif split:
                    nbr[got["q"]] = got["cand"]
                else:
                    nbr[got["q"]], d2[got["q"]] = got["nbr"], got["d2"]
            chunk += len(items)
            if not todo:
                continue
            shard_f = self._shard(shard_lists, table, lists, is_rep, nlist)
            if self.kind == "exact":  # through a PCA space where that is cheaper
                space_f = self._space(shard_f, int(sizes.sum()))
                futs = {c: self.submit(small.search_chunk, shard_f, space_f, it, t_f, width,
                                       self.device) for c, it in todo.items()}  # fmt: skip
                self.space_dim = self.submit(small.space_dim, space_f).result()
                del space_f
            else:
                futs = {c: self.submit(task, shard_f, it, t_f, width, self.device)
                        for c, it in todo.items()}  # fmt: skip
            del shard_f
            for c, (q, nb, dd) in self._as_completed(
                futs, f"search shard {s + 1}/{len(plan['shards'])}", "chunks"
            ):
                nbr[q] = nb
                if not split:
                    d2[q] = dd
                if self.store is not None:
                    part = {"cand": nb} if split else {"nbr": nb, "d2": dd}
                    self.store.save_part(f"chunk-{c:05d}", q=q, **part)
            release_free_pages()  # the shard is dropped: its pages go back before the next
        self.kept = None
        return nbr, d2

    def _saved_chunk(
        self, c: int, items: list, names: tuple, width: int, list_rows: Callable
    ) -> dict | None:
        """Search chunk ``c``'s saved result when whole: its queries are the rows of its
        ``items`` (list ranges of ``list_rows()``: the distinct rows by (list, id)) and each
        has ``width`` entries; else None."""
        if self.store is None:
            return None
        rows = sum(b - a for _, a, b in items)

        def whole(got: dict) -> bool:
            q = got["q"]
            if q.shape != (rows,) or any(got[n].shape != (rows, width) for n in names[1:]):
                return False
            ids, first = list_rows()
            want = [ids[first[lst] + a : first[lst] + b] for lst, a, b in items]
            return bool(np.array_equal(q, np.concatenate(want) if want else q[:0]))

        return self.store.load_part(f"chunk-{c:05d}", names, whole)

    def probe_tables(self, centroids, lists, is_rep, setting) -> tuple:
        """(each row's probes or None, each list's probed lists) of a setting: per-row
        probes come from the assignment; a list's table is then the union of its rows'."""
        nlist, nprobe = centroids.shape[0], setting["nprobe"]
        if setting.get("probing") != "row":
            return None, ivf.probe_table(centroids, nprobe)
        if nprobe > self.probes.shape[1]:  # more than the assignment ranked
            self.probes = self.more_probes(centroids, nprobe)
        row_probes = np.ascontiguousarray(self.probes[:, :nprobe])
        return row_probes, probed.union_table(lists[is_rep], row_probes[is_rep], nlist)

    def more_probes(self, centroids, nprobe: int) -> np.ndarray:
        """Every row's ``nprobe`` nearest lists, ranked by tasks from the rows the
        assignment kept or spilled (else read from the pool again); a bounded number of
        partitions in flight (spilled rows are read by the driver), the next submitted as
        each finishes."""
        sent = self.client.scatter([self.projection, centroids], broadcast=True, hash=False)
        out = np.empty((self.n, nprobe), self.probes.dtype)
        todo = list(range(len(self.sizes)))

        def submit(p: int):
            if self.kept is not None and p in self.kept:  # (not when restored)
                source = self.kept[p]
            elif self.spill is not None:
                source = self.client.scatter([np.load(self._spill_path(p))], hash=False)[0]
            else:
                source = self.bf
            return self.submit(probed.probe_part, source, p, *sent, nprobe)

        window = 2 * self.threads
        futs = {p: submit(p) for p in todo[:window]}
        for p, near in self._as_completed(futs, "probes", "partitions", more=todo[window:],
                                          submit=submit):  # fmt: skip
            out[self.offsets[p] : self.offsets[p + 1]] = near
        return out

    def rerank(self, cand, is_rep, lists, centroids) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-(k+1) of every distinct row among its search-space candidates ``cand``:
        blocks of rows, taken in the search's list order (so a block's candidates lie in few
        lists), re-ranked by tasks that read the full rows either from the rows written in
        list order (:mod:`d2scale.graph.listrows`) or by streaming the pool; a bounded
        number of blocks in flight, so neither the tasks nor their arguments outgrow the
        budget."""
        keep = self.k + 1
        nbr = np.full((self.n, keep), -1, np.int64)
        d2 = np.full((self.n, keep), np.inf)
        rank_of = np.empty(centroids.shape[0], np.int64)
        rank_of[ivf.list_order(centroids, self.seed)] = np.arange(centroids.shape[0])
        q_all = np.flatnonzero(is_rep)
        q_all = q_all[np.lexsort((q_all, rank_of[lists[q_all]]))]
        todo = {}  # block -> its queries
        for b, (first, end) in enumerate(self.rerank_blocks):
            q = np.sort(q_all[first:end])
            got = self._saved_block(b, q, keep)
            if got is not None:
                nbr[q], d2[q] = got["nbr"], got["d2"]
            else:
                todo[b] = q
        if not todo:
            return nbr, d2
        if self.rerank_from == "lists":
            pos, first = self.write_list_rows(q_all)
            sent = self.client.scatter([first, pos], broadcast=True, hash=False)
            task, fixed = listrows.rerank_block, (self._rows_directory(), self.bf, *sent)
        else:
            offsets = self.client.scatter(self.offsets, broadcast=True, hash=False)
            task, fixed = shards.rerank_streamed, (self.bf, offsets)
        del q_all

        def submit(b: int):
            # scattered, not embedded in the task: a block's queries and candidates are
            # megabytes, which go to a worker directly instead of through the scheduler
            q_f, cand_f = self.client.scatter([todo[b], cand[todo[b]]], hash=False)
            return self.submit(task, *fixed, q_f, cand_f, keep)

        blocks = list(todo)
        window = 2 * self.threads
        futs = {b: submit(b) for b in blocks[:window]}
        for b, (q, nb, dd) in self._as_completed(futs, "rerank", "blocks", more=blocks[window:],
                                                 submit=submit):  # fmt: skip
            nbr[q], d2[q] = nb, dd
            if self.store is not None:
                self.store.save_part(f"rerank-{b:05d}", q=q, nbr=nb, d2=dd)
            del q, nb, dd, todo[b]
            release_free_pages()
        return nbr, d2

    def write_list_rows(self, q_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write the distinct rows ``q_all`` (in list order) to a file per partition (the
        partitions already written are kept): (each row's position in the files, each
        file's first position)."""
        directory = self._rows_directory()
        order, first = listrows.file_order(q_all, self.offsets)
        pos = np.full(self.n, -1, np.int32 if order.size < 2**31 else np.int64)
        pos[order] = np.arange(order.size)
        futs = {}
        for p in range(len(self.sizes)):
            rows = int(first[p + 1] - first[p])
            if rows and not listrows.part_done(directory, p, rows, self.blocks):
                local = order[first[p] : first[p + 1]] - self.offsets[p]
                futs[p] = self.submit(listrows.write_part, self.bf, p, local, directory)
        for _ in self._as_completed(futs, "rerank: rows in list order", "partitions"):
            pass
        return pos, first

    def _saved_block(self, b: int, q: np.ndarray, keep: int) -> dict | None:
        """Re-ranked block ``b``'s saved result when it is whole and answers the queries
        ``q``; else None."""
        if self.store is None:
            return None

        def whole(got: dict) -> bool:
            shapes_ok = got["nbr"].shape == got["d2"].shape == (q.size, keep)
            return shapes_ok and np.array_equal(got["q"], q)

        return self.store.load_part(f"rerank-{b:05d}", ("q", "nbr", "d2"), whole)

    def plan(self, centroids, table, sizes, m: int, probe_cols: int) -> dict:
        """Shards (list groups fitting the memory budget), their search chunks, and — when
        the full rows do not all fit — the blocks of the separate re-ranking pass. The shards
        are sized to what the driver holds while they are searched (``probe_cols``: each
        row's probed lists), the re-ranking blocks to what it holds at the end."""
        order = ivf.list_order(centroids, self.seed)
        split = self.projection is not None
        # the candidates found (split), or the neighbours and distances found
        held = self.n * m * 4 if split else self.n * (self.k + 1) * 16
        if split and self.kept is not None:  # and the search-space rows kept by the assignment
            held += self.n * 4 * self.projection.dim
        searching = self.n * (8 + 4 + 1 + 2 * probe_cols + SEARCH_CALLER_BYTES)
        row_bytes = 16 + 4 * (self.dim if self.projection is None else self.projection.dim)
        avail = max(1, self.limit - searching - held)
        space = 2 * int(sizes.sum()) * row_bytes  # one shard of every row: pieces + shard
        # the search tasks running at once get what that shard leaves (at least
        # 1/TASK_SHARE_MIN of it); else a fifth, and the shards the rest
        tasks = avail - space
        tasks = tasks if tasks >= avail // TASK_SHARE_MIN else avail // 5
        budget = max(1, avail - tasks) // 2  # pieces + shard
        task_row = SEARCH_TASK_ROW_BYTES + 8 * (probe_cols + 3 * m)
        chunk_rows = max(MIN_CHUNK_ROWS, tasks // (self.threads * task_row))
        groups = shards.plan_shards(order, table, sizes, row_bytes, budget)
        chunks = [shards.plan_items(g, sizes, TASKS_PER_THREAD * self.threads, chunk_rows)
                  for g in groups]  # fmt: skip
        rows = [_probed_rows(table, sizes, g) for g in groups]
        one_shard = searching + held + space * TASK_SHARE_MIN // (TASK_SHARE_MIN - 1)
        plan = {"shards": groups, "chunks": chunks, "largest_shard_bytes": max(rows) * row_bytes,
                "shard_budget_bytes": budget, "gathered_rows": int(sum(rows)),
                "one_shard_limit_bytes": int(one_shard),
                "rows": "search-space" if split else "full"}  # fmt: skip
        if split:  # full rows of the queries + the task's per-candidate arrays
            free = max(1, self.limit - self._driver_bytes() - held)
            reps = int(sizes.sum())
            row_bytes = 4 * self.dim + RERANK_CANDIDATE_BYTES * m
            blocks = self._rerank_blocks(reps, row_bytes, free, RERANK_BLOCK_ROWS)
            source, why = self._rerank_source(len(blocks), reps)
            if source == "lists":  # smaller blocks: they need not share reads of the pool
                blocks = self._rerank_blocks(reps, row_bytes, free, LISTS_BLOCK_ROWS)
            plan.update(rerank_blocks=blocks, rerank_from=source, rerank_from_reason=why)
        return plan

    def _rerank_blocks(self, reps: int, row_bytes: int, free: int, most: int) -> list:
        """Blocks of at most ``most`` queries that the tasks running together hold within
        ``free`` bytes."""
        budget = min(free, most * row_bytes * self.threads)
        budget = max(budget, RERANK_MIN_ROWS * row_bytes * self.threads)
        return rerank.plan_blocks(reps, row_bytes, budget, self.threads)

    def _rerank_source(self, reads: int, reps: int) -> tuple[str, str]:
        """Where the re-ranking reads the full rows: ``"lists"`` (written in list order
        once) where streaming would read the pool ``LISTS_MIN_READS`` times or more and
        the workers can read the driver's disk, which holds them (``LISTS_MIN_READS_COSTLY``
        times where the source's ``costly_reads``); else ``"pool"``. With the reason; a
        warning when those reads of the pool could not be avoided."""
        costly = bool(getattr(self.blocks, "costly_reads", False))
        if reads < (LISTS_MIN_READS_COSTLY if costly else LISTS_MIN_READS):
            return "pool", f"{plural(reads, 'read')} of the pool"
        need = reps * listrows.row_bytes(self.blocks)
        directory = self._rows_directory()
        free = shutil.disk_usage(directory).free
        if not self._workers_local():
            why = "the workers run on other hosts and cannot read the driver's files"
        elif need + DISK_MARGIN > free:
            why = (f"the rows in list order need {need / 2**30:.1f} GiB of disk at "
                   f"{directory}, {free / 2**30:.1f} GiB free")  # fmt: skip
        else:
            return "lists", f"{need / 2**30:.1f} GiB written once instead of {reads} reads"
        self.say(f"knn graph: warning: the re-ranking reads the pool {reads} times: {why}")
        return "pool", why

    def _rows_directory(self) -> str:
        """Where the rows in list order go: beside the spill, the store's parts, or a
        temporary directory."""
        if self.rows_dir is None:
            self.rows_dir = self.spill or (
                self.store.parts_dir if self.store else tempfile.mkdtemp(prefix="d2scale-")
            )
        return self.rows_dir

    def _workers_local(self) -> bool:
        """Whether every worker runs on this host (and can read the driver's files)."""
        from distributed.utils import get_ip

        here = {"127.0.0.1", "localhost", "::1", get_ip()}
        for address, worker in self.client.scheduler_info().get("workers", {}).items():
            if not address.startswith("inproc://") and worker.get("host") not in here:
                return False
        return True

    def report(self, plan: dict, width: int) -> None:
        """Say how the search is sharded (and warn when one shard exceeds its budget)."""
        biggest, budget = plan["largest_shard_bytes"], plan["shard_budget_bytes"]
        if biggest > budget:  # one list with its probed lists alone exceeds the budget
            self.say(
                f"knn graph: warning: a list with its {width} probed lists needs "
                f"{biggest / 2**20:.0f} MiB, more than the shard budget of "
                f"{budget / 2**20:.0f} MiB: memory will exceed the limit"
            )
        self.say(
            f"knn graph: {plural(len(plan['shards']), 'shard')} of {plan.get('rows', '')} rows "
            f"(budget {budget / 2**20:.0f} MiB; limit {self.limit / 2**20:.0f} MiB, "
            f"{self.held_before / 2**20:.0f} MiB held before the graph)"
        )
        gathered, unique = plan.get("gathered_rows", 0), max(1, int(self.unique_rows))
        if len(plan["shards"]) > 1 and gathered > GATHER_WARN * unique:
            self.say(
                f"knn graph: warning: the shards gather {gathered / unique:.0f}× the pool's "
                f"rows in all (a list's rows probe up to {width} lists), so the search is "
                f"far slower than one shard; a memory limit of about "
                f"{plan['one_shard_limit_bytes'] / 2**30:.1f} GiB holds it in one shard"
            )

    def _shard(self, shard_lists, table, lists, is_rep, nlist):
        """A future of the shard holding ``shard_lists`` and the lists they probe."""
        need = np.zeros(nlist, bool)
        probed_lists = table[shard_lists].ravel()
        need[probed_lists[probed_lists >= 0]] = True
        pieces = []
        for p in range(len(self.sizes)):
            a, b = self.offsets[p], self.offsets[p + 1]
            local = np.flatnonzero(is_rep[a:b] & need[lists[a:b]])
            if local.size == 0:
                continue
            if self.kept is not None and p in self.kept:
                pieces.append(self.submit(shards.pieces_from_kept, self.kept[p], local, int(a)))
            elif self.spill is not None:  # read here: the driver owns the spill
                y = np.load(self._spill_path(p), mmap_mode="r")
                piece = (local + a, np.asarray(y[local]), lists[a:b][local])
                pieces.append(self.client.scatter([piece], hash=False)[0])
                del y, piece
            else:
                pieces.append(self.submit(shards.extract_part, self.bf, p, int(a), local,
                                          lists[a:b][local], self.projection))  # fmt: skip
        return self.submit(shards.build_shard, pieces, nlist)

    def _space(self, shard_f, rows: int):
        """A future of the PCA search space (:mod:`d2scale.graph.small`) of the one-shard
        exact search holding ``rows`` rows, projected by one task per thread."""
        basis = self.submit(small.fit_basis, shard_f, self.seed)
        step = -(-rows // self.threads)
        pieces = [self.submit(small.project, shard_f, basis, a, min(rows, a + step))
                  for a in range(0, rows, step)]  # fmt: skip
        return self.submit(small.join, basis, pieces)

    def _as_completed(self, futs: dict, what: str, unit: str, more=(), submit=None):
        """(key, result) of the futures in ``futs`` as they finish, each dropped after use;
        each is counted in ``unit`` (what one future is). With ``more`` keys and their
        ``submit``, the next key is submitted as each future finishes (a sliding window).
        Stopped early (an error, Ctrl-C), the futures not yet done are cancelled: on a
        shared or running cluster they would otherwise go on computing for nothing."""
        from distributed import as_completed

        more = list(more)
        keys = {f.key: p for p, f in futs.items()}
        total = len(futs) + len(more)
        running = as_completed(list(futs.values()), loop=self.client.loop)
        try:
            for i, f in enumerate(running, 1):
                self.say(f"knn graph: {what}: {i}/{total} {unit}")
                p = keys[f.key]
                if more:
                    q = more.pop(0)
                    futs[q] = submit(q)
                    keys[futs[q].key] = q
                    running.add(futs[q])
                yield p, f.result()
                futs.pop(p)
        finally:
            if futs:
                self.client.cancel(list(futs.values()))

    # ------------------------------------------------------------ memory
    def _driver_bytes(self) -> int:
        """What the driver holds besides shards: per-row state and the result arrays."""
        probes = 2 * ivf.PROBE_CAP  # per-row probing: each row's nearest lists
        return self.n * (16 + 4 + 8 + 1 + (self.k + 1) * 16 + self.k * 12 + probes)

    def _keep_mode(self) -> str:
        """What the assignment does with the search-space rows (see
        :func:`shards.assign_part`): ``"kept"`` in memory for the search when they fit one
        shard (three copies: kept, gathered, placed), with a PCA search space beside the
        candidates; else, with a PCA search space, ``"spill"``: they go to disk, so that each
        shard reads its rows from there instead of reading and projecting the pool again
        (the full rows are read again only by the re-ranking pass: holding them all measured
        slower at 1M × 768, 98 s and 10.5 GB against 80 s and 1.5 GB); else ``""``: the
        shards read the full rows from the pool."""
        if self.projection is None:
            return "kept" if self.one_shard() else ""
        most_candidates = 4 * (self.k + 1)  # the tuner's largest choice
        need = 3 * self.n * (4 * self.projection.dim + 16) + self._driver_bytes()
        return "kept" if need + self.n * most_candidates * 4 <= self.limit else "spill"

    def _spill_path(self, part: int) -> str:
        return os.path.join(self.spill, f"searchspace-{part:05d}.npy")

    def drop_spill(self, done: bool) -> None:
        """Delete the spilled search-space rows and the rows in list order once the graph
        is written (or, without a store, always: nothing resumes from them)."""
        if not done:
            return
        if self.store is None:
            for directory in {self.spill, self.rows_dir} - {None}:
                shutil.rmtree(directory, ignore_errors=True)
        else:
            parts = self.store.parts_dir
            for p in range(len(self.sizes)):
                paths = [listrows.rows_path(parts, p), listrows.norms_path(parts, p)]
                for path in paths + ([self._spill_path(p)] if self.spill else []):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
        self.spill = self.rows_dir = None

    def one_shard(self) -> bool:
        """Whether all full rows fit in one shard: kept by the assignment, gathered into
        pieces and placed in the shard (three copies at the peak)."""
        need = 3 * self.n * (4 * self.dim + 16) + self._driver_bytes()
        return need <= self.limit

    def _check_exact_fits(self) -> None:
        if not self.one_shard():
            raise D2ScaleError(
                f"exact search holds all {self.n:,} embeddings ({self.n * self.dim * 4 / 2**30:.1f}"
                " GiB float32, up to three copies while gathering) in memory, more than the "
                "memory limit; use index 'ivf' or raise the memory limit"
            )

    # ------------------------------------------------------------ output
    def write(self, graph: KnnGraph, info: dict) -> None:
        with self.stage("write"):
            save_graph(self.store.gdir, graph, {**info, "timings": self.timings}, self.lists)
        self.finished = True

    def describe(self, fingerprint: str) -> dict:
        return {"n": self.n, "k": self.k, "dim": self.dim, "partitions": len(self.sizes),
                "memory_limit": self.limit, "memory_held_before": self.held_before,
                "shards": self.n_shards,
                "largest_shard_bytes": self.shard_bytes[0],
                "shard_budget_bytes": self.shard_bytes[1],
                "gathered_rows": self.gathered_rows,
                "rerank_blocks": None if self.rerank_blocks is None else len(self.rerank_blocks),
                "rerank_rows_from": None if self.rerank_blocks is None else self.rerank_from,
                "rerank_rows_why": None if self.rerank_blocks is None else self.rerank_why,
                "search_rows_from": {"kept": "kept", "spill": "disk"}.get(self.keep_mode, "pool"),
                "exact_search_dim": self.space_dim,
                "fingerprint": fingerprint}  # fmt: skip


# ---------------------------------------------------------------- helpers


EVAL_KEYS = ("truth_ids", "truth_d2", "cands_ids", "cands_d2")  # a part's evaluation share


def _eval_arrays(res: dict, n_eval: int, keep: tuple[int, int]) -> dict[str, np.ndarray]:
    """An assignment task's share of the evaluation as arrays (empty: none evaluated; a
    partition with no rows gives padding)."""
    if not n_eval:
        return {}
    out = {}
    for what, width in zip(("truth", "cands"), keep, strict=True):
        ids, d2 = res[what] if res[what] is not None else (
            np.full((n_eval, width), -1, np.int64), np.full((n_eval, width), np.inf))  # fmt: skip
        out |= {f"{what}_ids": ids, f"{what}_d2": d2}
    return out


def _eval_share(arrays: dict) -> list[tuple]:
    """``[(truth, cands)]`` of a part's evaluation arrays (``[]`` when there are none)."""
    if "truth_ids" not in arrays:
        return []
    return [((arrays["truth_ids"], arrays["truth_d2"]), (arrays["cands_ids"], arrays["cands_d2"]))]


def _rows_by_list(is_rep: np.ndarray, lists: np.ndarray, nlist: int) -> tuple:
    """(the distinct rows sorted by (list, id), each list's first position)."""
    rows = np.flatnonzero(is_rep)
    rows = rows[np.argsort(lists[rows], kind="stable")]
    return rows, np.searchsorted(lists[rows], np.arange(nlist + 1))


def _npy_shape(path: str) -> tuple | None:
    """The shape of the ``.npy`` file ``path``, or None when it is missing or unreadable."""
    try:
        return np.load(path, mmap_mode="r").shape
    except (OSError, ValueError):
        return None


def _probed_rows(table: np.ndarray, sizes: np.ndarray, shard_lists: list[int]) -> int:
    """Rows a shard answering ``shard_lists`` holds: theirs and their probed lists'."""
    held = scan.unique_sorted(table[shard_lists])
    return int(sizes[held[held >= 0]].sum())


def _first_reps(cands: np.ndarray, rep: np.ndarray) -> np.ndarray:
    """Candidates as representatives, each only at its first place (repeats → -1)."""
    out = np.where(cands >= 0, rep[np.maximum(cands, 0)], -1)
    order = np.argsort(out, axis=1, kind="stable")  # equal ones: the first place first
    ranked = np.take_along_axis(out, order, axis=1)
    repeat = np.zeros(out.shape, dtype=bool)
    repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    np.put_along_axis(out, order, np.where(repeat, -1, ranked), axis=1)
    return out


def _model_arrays(projection, centroids, bound) -> dict[str, np.ndarray]:
    arrays = {"centroids": centroids}
    if projection is not None:
        arrays |= {"pca_mean": projection.mean, "pca_components": projection.components}
    if bound is not None:
        arrays["bound"] = bound
    return arrays


def _saved_eval_rows(model, shape: tuple[int, int]) -> np.ndarray | None:
    """The evaluation rows saved with an untuned model (None: tuned, none or other rows)."""
    if model is None or model[1] is not None:
        return None
    rows = model[0].get("eval_rows")
    return rows if rows is not None and rows.shape == shape else None


def _restore(model) -> tuple:
    """(projection, centroids, bound, tuning result or None) of a saved model."""
    arrays, tuned = model
    projection = None
    if "pca_mean" in arrays:
        projection = ivf.Projection(arrays["pca_mean"], arrays["pca_components"])
    return projection, arrays["centroids"], arrays.get("bound"), tuned


@contextmanager
def _one_thread():
    """BLAS and faiss's OpenMP limited to one thread (restored afterwards)."""
    from d2scale.blas import load_faiss

    faiss = load_faiss()
    from threadpoolctl import threadpool_limits

    omp = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        faiss.omp_set_num_threads(omp)


def _device(device: str) -> str:
    """``auto`` → CPU: the CuPy scan ships every (list, list) block to the GPU and measured
    5× slower than 16 CPU cores on an H200 (200k × 1536, same graph); ``cuda`` on request,
    refused without a GPU as every command does (:func:`d2scale.backends.resolve_device`)."""
    return "cpu" if device == "auto" else resolve_device(device)


def _validate(blocks, k, index, recall, device, memory_limit, nprobe, nlist) -> tuple[int, int]:
    if not isinstance(blocks, EmbeddingBlocks):
        raise D2ScaleError("blocks must provide sizes, dim and load(i) (an EmbeddingBlocks)")
    n = int(sum(blocks.sizes))
    if n == 0:
        raise D2ScaleError("the input has no embeddings: cannot build a kNN graph of 0 samples")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise D2ScaleError(f"the 'n_neighbors' parameter must be an int ≥ 1; got {k!r}")
    if k >= n:
        raise D2ScaleError(f"n_neighbors ({k}) must be smaller than the number of samples ({n})")
    for name, value, options in (("index", index, INDEXES), ("device", device, DEVICES)):
        if value not in options:
            raise D2ScaleError(
                f"the {name!r} parameter must be one of {', '.join(options)}; got {value!r}"
            )
    if not (isinstance(recall, (int, float)) and 0 < recall <= 1):
        raise D2ScaleError(f"the 'recall' parameter must be in (0, 1]; got {recall!r}")
    if memory_limit is not None and not (isinstance(memory_limit, int) and memory_limit > 0):
        raise D2ScaleError(f"the 'memory_limit' parameter must be bytes > 0; got {memory_limit!r}")
    for name, value in (("nprobe", nprobe), ("nlist", nlist)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise D2ScaleError(f"the {name!r} parameter must be an int ≥ 1; got {value!r}")
    return n, int(k)

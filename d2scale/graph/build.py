"""``build_knn_graph``: the kNN graph of a pool, exact or IVF, sharded, streamed through Dask.

Stages (each timed, reported through ``progress`` and recorded for ``run.json``):

``sample``  seeded rows for the input fingerprint, IVF training and recall evaluation;
``train``   (IVF) PCA search space and k-means lists;
``assign``  (IVF) every row's list, and the exact neighbours of the evaluation rows;
``tune``    (IVF) the smallest-cost (nprobe, candidates) whose measured recall@k on the
            held-out evaluation rows reaches the target;
``search``  (partition, shard) tasks, then one merge per partition → part files;
``write``   the consolidated graph (with ``workdir``).

With ``workdir`` a killed build resumes: finished partitions and the trained model are
reused, and a directory holding another input or other parameters is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager

import faiss
import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.graph import ivf, shards
from d2scale.graph.exact import merge_sorted
from d2scale.graph.store import GraphStore, save_graph
from d2scale.types import EmbeddingBlocks, KnnGraph

AUTO_EXACT_MAX = 15_000  # "auto" picks exact search up to this many rows (measured crossover)
PCA_ENERGY = 0.9  # variance kept by the automatic PCA search space
TRAIN_ROWS_PER_LIST = 32  # k-means sample size per list
PCA_ROWS = 20_000  # rows used to fit the PCA
EVAL_ROWS = (200, 1000)  # held-out rows for recall tuning: bounds ...
EVAL_BUDGET = 1e8  # ... and their share of exact work (rows × n)
FINGERPRINT_ROWS = 256
MULTI_SHARD_MAX_NPROBE = 256  # tuning grid bound when shards must be rebuilt to be searched
INDEXES = ("auto", "exact", "ivf")
DEVICES = ("auto", "cpu", "cuda")


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
    pca_dim: int | str | None = "auto",
    meta: dict | None = None,
) -> tuple[KnnGraph, dict]:
    """The directed kNN graph of ``blocks`` (SPEC §1) and a dict describing how it was built.

    ``index``: "exact", "ivf", or "auto" (exact up to ``AUTO_EXACT_MAX`` rows). IVF tunes
    ``nprobe`` on held-out rows until recall@k reaches ``recall`` (``nprobe`` fixes it
    instead); ``nlist`` defaults to ~2·√N; ``pca_dim`` ("auto": keep 90% of the variance,
    None: search in the full space) sets the candidate search space — candidates are always
    re-ranked by exact float64 distances. ``memory_limit`` (bytes, default half the
    available memory) bounds the shards; ``client`` is a ``distributed.Client`` (None: an
    in-process one); ``workdir`` makes the build resumable and writes the graph directory.
    ``meta`` (facts about the source, e.g. its path) is added to the returned dict and to
    ``meta.json``.
    """
    n, k = _validate(blocks, n_neighbors, index, recall, device, memory_limit, nprobe, pca_dim)
    kernels, device_used = _device(device)
    kind = index if index != "auto" else ("exact" if n <= AUTO_EXACT_MAX else "ivf")
    build = _Build(blocks, k, recall, seed, kernels, progress, workdir)
    limit = memory_limit or shards.default_memory_limit()
    with shards.task_client(client) as cl:
        build.client = cl
        build.bf = cl.scatter(blocks, broadcast=True, hash=False)
        if kind == "exact":
            graph, info = build.exact(limit)
        else:
            nlist = nlist or ivf.choose_nlist(n)
            graph, info = build.ivf(limit, min(nlist, n), nprobe, pca_dim)
        info = {"index": kind, "device": device_used, **info, **(meta or {})}
        if build.store is not None:
            build.write(graph, info)
    return graph, {**info, "timings": build.timings}


class _Build:
    """State of one build: inputs, Dask client, store, timings."""

    def __init__(self, blocks, k, recall, seed, kernels, progress, workdir):
        self.blocks, self.k, self.recall, self.seed, self.kernels = blocks, k, recall, seed, kernels
        self.sizes = [int(s) for s in blocks.sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.n, self.dim = int(self.offsets[-1]), int(blocks.dim)
        self.say = progress or (lambda msg: None)
        self.store = GraphStore(workdir) if workdir else None
        self.timings: dict[str, float] = {}
        self.client = self.bf = None
        self.lists_parts: dict[int, object] = {}
        self.kept: dict[int, object] = {}  # shard lists built while tuning, reused by search

    @contextmanager
    def stage(self, name: str):
        self.say(f"knn graph: {name}")
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)

    def submit(self, fn, *args, **kwargs):
        return self.client.submit(fn, *args, pure=False, **kwargs)

    # ------------------------------------------------------------ common stages
    def sample(self, n_train: int, n_eval: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        """Fingerprint, training rows, evaluation rows (held out when possible) and their ids."""
        own = getattr(self.blocks, "fingerprint", None)
        n_fp = 0 if own is not None else min(self.n, FINGERPRINT_ROWS)
        fp_rows = np.random.default_rng(0).choice(self.n, n_fp, replace=False)
        perm = np.random.default_rng(self.seed).permutation(self.n)
        train = np.sort(perm[:n_train])
        held = perm[n_train:] if self.n - n_train >= n_eval else perm
        eval_ids = np.sort(held[:n_eval])
        rows = np.unique(np.concatenate([fp_rows, train, eval_ids]))
        x = self._take(rows)
        at = lambda r: x[np.searchsorted(rows, r)]  # noqa: E731
        fingerprint = _fingerprint(self.blocks, at(np.sort(fp_rows)))
        return fingerprint, at(train), at(eval_ids), eval_ids

    def _take(self, rows: np.ndarray) -> np.ndarray:
        futs = [
            self.submit(shards.take_rows, self.bf, p, local)
            for p, local in shards.part_rows(self.offsets, rows).items()
        ]
        got = self.client.gather(futs)
        return np.concatenate(got) if got else np.empty((0, self.dim), np.float32)

    def begin(self, fingerprint: str, params: dict, plan: list[list[int]]) -> list[list[int]]:
        if self.store is None:
            return plan
        return self.store.begin(fingerprint, params, plan)

    # ------------------------------------------------------------ exact
    def exact(self, limit: int) -> tuple[KnnGraph, dict]:
        with self.stage("sample"):
            fingerprint, *_ = self.sample(0, 0)
        plan = shards.plan_shards(self.n, self.dim * 4 + 8, limit)
        params = self.params("exact", {})
        plan = self.begin(fingerprint, params, plan)
        with self.stage("search"):
            graph = self.search(plan, self.k + 1, build=lambda a, b: (None, 1), probes=None)
        info = {"recall": 1.0, "recall_method": "exact search (float64 ranks, certified)"}
        return graph, {**info, **self.describe(plan, fingerprint)}

    # ------------------------------------------------------------ IVF
    def ivf(self, limit: int, nlist: int, nprobe: int | None, pca_dim) -> tuple[KnnGraph, dict]:
        n_train = min(self.n, TRAIN_ROWS_PER_LIST * nlist)
        n_eval = min(self.n, int(np.clip(EVAL_BUDGET / self.n, *EVAL_ROWS)))
        with self.stage("sample"):
            fingerprint, x_train, x_eval, eval_ids = self.sample(n_train, n_eval)
        plan = shards.plan_shards(self.n, self.dim * 6 + 8, limit)
        params = self.params("ivf", {"nlist": nlist, "nprobe": nprobe, "pca_dim": pca_dim})
        plan = self.begin(fingerprint, params, plan)
        model = self.store.load_model() if self.store else None
        if model is not None:
            projection, centroids, tuned = _restore(model)
            with self.stage("assign"):
                assigned = self.assign(projection, centroids, None, self.todo())
                self._wait(list(assigned.values()), "assign")
        else:
            with self.stage("train"):
                projection = _projection(x_train, pca_dim)
            while True:
                centroids, assigned, tuned = self.fit(
                    plan, projection, x_train, x_eval, eval_ids, nlist, nprobe
                )
                if tuned["recall_reached"] or projection is None or pca_dim != "auto":
                    break
                self.say(
                    "knn graph: the PCA search space misses the recall target; retrying "
                    "in the full space"
                )
                projection = None
                self.kept.clear()
            if self.store is not None:
                self.store.save_model(_model_arrays(projection, centroids), tuned)
        with self.stage("search"):

            def build(a, b):
                return [assigned[p] for p in _overlapping(self.offsets, a, b)], nlist

            def probes(p):
                return self.submit(
                    shards.probe_part,
                    self.bf,
                    p,
                    assigned[p],
                    centroids,
                    tuned["nprobe"],
                    self.kernels,
                )

            graph = self.search(plan, tuned["candidates"], build, probes, assigned)
        info = {**tuned, "nlist": nlist, "pca_dim": None if projection is None else projection.dim}
        self.lists_parts = {p: assigned[p] for p in assigned}
        return graph, {**info, **self.describe(plan, fingerprint)}

    def fit(self, plan, projection, x_train, x_eval, eval_ids, nlist, nprobe):
        """Train the lists, assign every row, measure and tune recall."""
        with self.stage("train"):
            y_train = x_train if projection is None else projection(x_train)
            centroids = ivf.train_centroids(y_train, nlist, self.seed)
        with self.stage("assign"):
            assigned = self.assign(projection, centroids, x_eval, self.todo())
            self._wait(list(assigned.values()), "assign")
        with self.stage("tune"):
            truth = self.truth(assigned, eval_ids)
            tuned = self.tune(
                plan, assigned, projection, centroids, x_eval, eval_ids, truth, nprobe
            )
        return centroids, assigned, tuned

    def assign(self, projection, centroids, x_eval, todo) -> dict:
        """Assignment futures of every partition (all are needed once any is still to do)."""
        if not todo and x_eval is None:
            return {}
        x_eval = np.empty((0, self.dim), np.float32) if x_eval is None else x_eval
        c_f, e_f = self.client.scatter([centroids, x_eval], broadcast=True, hash=False)
        return {
            p: self.submit(
                shards.assign_part,
                self.bf,
                p,
                int(self.offsets[p]),
                projection,
                c_f,
                e_f,
                self.k + 1,
                self.kernels,
                self.store.lists_path(p) if self.store else None,
            )
            for p in range(len(self.sizes))
        }

    def truth(self, assigned: dict, eval_ids: np.ndarray) -> np.ndarray:
        """Exact top-k ids of the evaluation rows (merged from every partition)."""
        parts = self.client.gather([self.submit(_truth_of, f) for f in assigned.values()])
        ids, d2 = merge_sorted([p[0] for p in parts], [p[1] for p in parts], self.k + 1)
        return shards.drop_self(ids, d2, eval_ids, self.k)[0]

    def tune(self, plan, assigned, projection, centroids, x_eval, eval_ids, truth, nprobe):
        """Measure recall@k of the evaluation rows over an (nprobe, candidates) grid; pick the
        cheapest setting reaching the target."""
        nlist, multi = centroids.shape[0], len(plan) > 1
        grid = [nprobe] if nprobe else ivf.nprobe_grid(nlist)
        if multi:  # every shard is built once: evaluate a bounded grid in one pass
            grid = [p for p in grid if p <= MULTI_SHARD_MAX_NPROBE] or grid[:1]
        y_eval = None if projection is None else projection(x_eval)
        y = x_eval if y_eval is None else y_eval
        probes = ivf.probe(y, centroids, max(grid), self.kernels.knn_small)
        k1 = self.k + 1
        m_opts = [k1] if projection is None else [2 * k1, 4 * k1, 8 * k1]
        sent = self.client.scatter([x_eval, y_eval, probes], hash=False)
        curve: dict[tuple[int, int], tuple[float, float]] = {}  # (nprobe, m) → (recall, se)
        for chunk in [grid] if multi else [grid[i : i + 3] for i in range(0, len(grid), 3)]:
            per_shard = []
            for s, (a, b) in enumerate(plan):
                lists_f = self.kept.get(s) or self.submit(
                    shards.build_shard, self.bf, self.offsets, a, b,
                    [assigned[p] for p in _overlapping(self.offsets, a, b)], nlist,
                )  # fmt: skip
                res = self.submit(shards.tune_search, lists_f, *sent, chunk, max(m_opts),
                                  self.kernels)  # fmt: skip
                per_shard.append(res.result())
                if not multi:
                    self.kept[0] = lists_f
                del lists_f
            curve |= self._recalls(per_shard, chunk, m_opts, eval_ids, truth)
            if any(
                curve[(p, m_opts[0])][0] - curve[(p, m_opts[0])][1] >= self.recall for p in chunk
            ):
                break  # any larger nprobe costs more than this one with the fewest candidates
        dim_s = x_eval.shape[1] if y_eval is None else y_eval.shape[1]
        cost = {pm: pm[0] * self.n / nlist * dim_s + 3 * pm[1] * self.dim for pm in curve}
        ok = [pm for pm in curve if curve[pm][0] - curve[pm][1] >= self.recall]
        best = min(ok, key=cost.get) if ok else max(curve, key=lambda pm: (curve[pm], -cost[pm]))
        return {
            "nprobe": best[0],
            "candidates": best[1],
            "recall": round(curve[best][0], 5),
            "recall_se": round(curve[best][1], 5),
            "recall_target": self.recall,
            "recall_reached": bool(ok),
            "recall_method": f"recall@{self.k} of {len(eval_ids)} held-out seeded rows against "
            "exact search, measured on the built index; the cheapest setting whose recall minus "
            "one standard error reaches the target",
            "n_eval": len(eval_ids),
            "recall_curve": {
                f"nprobe={p},candidates={m}": round(r[0], 5) for (p, m), r in curve.items()
            },
        }

    def _recalls(self, per_shard, grid, m_opts, eval_ids, truth) -> dict:
        curve = {}
        for p in grid:
            ids, _, full = merge_sorted(
                [r[p][0] for r in per_shard],
                [r[p][1] for r in per_shard],
                max(m_opts),
                [r[p][2] for r in per_shard],
            )
            for m in m_opts:
                nbr, d2 = merge_sorted([ids[:, :m]], [full[:, :m]], m)
                found = shards.drop_self(nbr, d2, eval_ids, self.k)[0]
                curve[(p, m)] = ivf.recall_at_k(found, truth)
        return curve

    # ------------------------------------------------------------ search and write
    def todo(self) -> list[int]:
        done = self.store.done(len(self.sizes)) if self.store else set()
        return [p for p in range(len(self.sizes)) if p not in done]

    def search(self, plan, m, build, probes, assigned=None) -> KnnGraph:
        """Run the (partition, shard) searches and per-partition merges; assemble the graph.

        Each partition's merge is submitted right after its last search, so candidates stream
        through memory; with several shards and a store, earlier shards' candidates wait on disk.
        """
        assigned = assigned or {}
        todo, multi = self.todo(), len(plan) > 1
        cands: dict[int, list] = {p: [] for p in todo}
        probe_f: dict[int, object] = {}
        merges: dict[int, object] = {}
        for s, (a, b) in enumerate(plan):
            last = s == len(plan) - 1
            need = [p for p in todo if not (multi and self._have(p, s))]
            for p in set(todo) - set(need):
                cands[p].append(self.store.shard_part_path(p, s))
            lists_f = None
            if need:
                lists_f = self.kept.pop(s, None) or self.submit(
                    shards.build_shard, self.bf, self.offsets, a, b, *build(a, b)
                )
            for p in todo:
                if p in need:
                    if probes is not None and p not in probe_f:
                        probe_f[p] = probes(p)
                    path = self.store.shard_part_path(p, s) if multi and self.store else None
                    cands[p].append(self.submit(shards.search_part, lists_f, self.bf, p,
                                                assigned.get(p), probe_f.get(p), m, self.kernels,
                                                path))  # fmt: skip
                if last:
                    part_path = self.store.part_path(p) if self.store else None
                    merges[p] = self.submit(shards.merge_part, cands.pop(p), m, self.k,
                                            int(self.offsets[p]), part_path)  # fmt: skip
            if multi and not last and need:
                self._wait([cands[p][-1] for p in need], f"search shard {s + 1}/{len(plan)}")
                if self.store is not None:  # keep the candidates on disk only
                    for p in need:
                        cands[p][-1] = self.store.shard_part_path(p, s)
            del lists_f
        return self._assemble(merges)

    def _have(self, p: int, s: int) -> bool:
        return self.store is not None and os.path.exists(self.store.shard_part_path(p, s))

    def _wait(self, futs: list, what: str) -> None:
        from distributed import as_completed

        for i, f in enumerate(as_completed(futs, loop=self.client.loop), 1):
            f.result()
            self.say(f"knn graph: {what}: {i}/{len(futs)} partitions")

    def _assemble(self, merges: dict) -> KnnGraph:
        from distributed import as_completed

        total, done = len(self.sizes), len(self.sizes) - len(merges)
        rows: dict[int, tuple] = {}
        index = {f.key: p for p, f in merges.items()}
        last = time.monotonic()
        finished: list[int] = []
        for f in as_completed(list(merges.values()), loop=self.client.loop):
            p = index[f.key]
            rows[p] = f.result()
            finished.append(p)
            done += 1
            self.say(f"knn graph: search: {done}/{total} partitions")
            if self.store is not None and (time.monotonic() - last > 2 or done == total):
                self.store.mark_done(finished)
                last = time.monotonic()
        for p in range(total):
            if p not in rows:
                rows[p] = self.store.read_part(p)
        nbr = np.concatenate([rows[p][0] for p in range(total)])
        dist = np.concatenate([rows[p][1] for p in range(total)])
        return KnnGraph(nbr, dist)

    def write(self, graph: KnnGraph, info: dict) -> None:
        with self.stage("write"):
            lists = None
            if info["index"] == "ivf":
                lists = np.concatenate([self._lists(p) for p in range(len(self.sizes))])
            save_graph(self.store.gdir, graph, {**info, "timings": self.timings}, lists)

    def _lists(self, p: int) -> np.ndarray:
        f = self.lists_parts.get(p)
        if f is not None:
            return self.submit(_lists_of, f).result()
        return np.load(self.store.lists_path(p))

    # ------------------------------------------------------------ descriptions
    def params(self, kind: str, extra: dict) -> dict:
        return {
            "index": kind,
            "n_neighbors": self.k,
            "recall": self.recall,
            "seed": self.seed,
            "sizes": self.sizes,
            "dim": self.dim,
            **extra,
        }

    def describe(self, plan: list[list[int]], fingerprint: str) -> dict:
        return {
            "n": self.n,
            "k": self.k,
            "dim": self.dim,
            "partitions": len(self.sizes),
            "shards": plan,
            "fingerprint": fingerprint,
        }


# ---------------------------------------------------------------- helpers


def _truth_of(assigned: dict):
    return assigned["truth"]


def _lists_of(assigned: dict) -> np.ndarray:
    return assigned["probes"][:, 0]


def _overlapping(offsets: np.ndarray, a: int, b: int) -> list[int]:
    return [p for p in range(len(offsets) - 1) if offsets[p] < b and offsets[p + 1] > a]


def _projection(x_train: np.ndarray, pca_dim) -> ivf.Projection | None:
    sample = x_train[:PCA_ROWS]
    if pca_dim is None or sample.shape[0] < 2:
        return None
    if pca_dim == "auto":
        return ivf.fit_pca(sample, PCA_ENERGY)
    return ivf.pca_of_dim(sample, int(pca_dim)) if int(pca_dim) < x_train.shape[1] else None


def _model_arrays(projection, centroids) -> dict[str, np.ndarray]:
    arrays = {"centroids": centroids}
    if projection is not None:
        arrays |= {"pca_mean": projection.mean, "pca_components": projection.components}
    return arrays


def _restore(model) -> tuple[ivf.Projection | None, np.ndarray, dict]:
    arrays, tuned = model
    projection = None
    if "pca_mean" in arrays:
        projection = ivf.Projection(arrays["pca_mean"], arrays["pca_components"])
    return projection, arrays["centroids"], tuned


def _fingerprint(blocks: EmbeddingBlocks, rows: np.ndarray) -> str:
    """The source's own ``fingerprint`` if it has one, else a hash of sizes, dim and seeded
    sample rows."""
    own = getattr(blocks, "fingerprint", None)
    if own is not None:
        return str(own)
    h = hashlib.sha256(json.dumps([list(map(int, blocks.sizes)), int(blocks.dim)]).encode())
    h.update(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _device(device: str) -> tuple[ivf.Kernels, str]:
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "cuda" and n_gpus == 0:
        raise D2ScaleError(
            "device 'cuda' needs faiss with GPU support and a visible GPU "
            "(pip install 'd2scale[gpu]'); use device='cpu' or 'auto'"
        )
    if device != "cpu" and n_gpus > 0:
        return ivf.Kernels.cuda(), "cuda"
    return ivf.Kernels.cpu(), "cpu"


def _validate(blocks, k, index, recall, device, memory_limit, nprobe, pca_dim) -> tuple[int, int]:
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
    if nprobe is not None and not (isinstance(nprobe, int) and nprobe >= 1):
        raise D2ScaleError(f"the 'nprobe' parameter must be an int ≥ 1; got {nprobe!r}")
    if not (pca_dim in (None, "auto") or (isinstance(pca_dim, int) and pca_dim >= 1)):
        raise D2ScaleError(
            f"the 'pca_dim' parameter must be 'auto', None or an int ≥ 1; got {pca_dim!r}"
        )
    return n, int(k)

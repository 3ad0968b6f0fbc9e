"""Fixed costs of a `d2scale select` process before any row is read; prints one JSON document.

    python benchmarks/bench_startup.py

In one fresh process, in the order `select` pays them: the CLI module, the pipeline
(NumPy, pyarrow, fsspec), `distributed`, starting and stopping the embedded local cluster
(one in-process worker, dashboard on a free port), the kNN graph package (faiss) and the D2
method (numba, loading cached kernels). Wall and CPU seconds of each: on a loaded machine
the CPU seconds are the steadier figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def step(costs: dict, name: str, fn) -> None:
    w, c = time.perf_counter(), time.process_time()
    fn()
    costs[name] = {"wall_s": round(time.perf_counter() - w, 3),
                   "cpu_s": round(time.process_time() - c, 3)}  # fmt: skip


def cluster() -> None:
    from d2scale.backends import dask_client

    with dask_client(workers=os.cpu_count()):
        pass


def import_tree(modules: str) -> dict[str, float]:
    """Cumulative import seconds of the ten costliest top-level packages behind ``modules``
    (``python -X importtime`` in a fresh process; a package's figure includes what it
    imports first, so the figures overlap)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {modules}"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    top = {}
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        name = parts[-1].strip()
        if len(parts) == 3 and parts[1].strip().isdigit() and "." not in name:
            top[name] = round(int(parts[1]) / 1e6, 3)
    return dict(sorted(top.items(), key=lambda kv: -kv[1])[:10])


def main() -> None:
    costs: dict = {}
    step(costs, "import d2scale.cli.main", lambda: __import__("d2scale.cli.main"))
    step(costs, "import d2scale.select.pipeline", lambda: __import__("d2scale.select.pipeline"))
    step(costs, "import distributed", lambda: __import__("distributed"))
    step(costs, "local cluster start + stop", cluster)
    step(costs, "import d2scale.graph (faiss)", lambda: __import__("d2scale.graph"))
    step(costs, "import d2scale.methods.d2 (numba)", lambda: __import__("d2scale.methods.d2"))
    total = {k: round(sum(v[k] for v in costs.values()), 3) for k in ("wall_s", "cpu_s")}
    tree = import_tree("d2scale.select.pipeline, distributed, d2scale.graph, d2scale.methods.d2")
    print(json.dumps({"steps": costs, "total": total, "import_tree_s": tree,
                      "load_average_1m": os.getloadavg()[0]}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

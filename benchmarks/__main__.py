"""The benchmark suite: I/O, kNN graph, message passing and end-to-end select in one run.

    python -m benchmarks [--sizes 100000,1000000] [--out DIR] [--only io,knn,mp,select,small]
    d2scale bench ...                  (the same, from an editable install)

Writes ``DIR/bench.json`` (every number, with the full output of each benchmark script) and
``DIR/bench.md`` (tables, with the machine, versions, git revision, the load average and the
busiest other processes: the machine may be shared). Sections:

* ``io``     reading a synthetic pool (``d2scale synth``; page cache warm, as just written):
             uids + scores (the read stage), then every embedding block (decode, normalise);
* ``knn``    ``benchmarks/bench_knn.py``: d2scale vs exact flat search, faiss IVF-Flat and
             ``big_batch_search`` at equal recall;
* ``mp``     ``benchmarks/bench_mp.py``: ``d2scale mp`` on synthetic k=10 graphs, and the
             plain-Python heapq greedy and dense reference sampler at ``--baseline-n``;
* ``select`` ``d2scale select`` end to end (``benchmarks/bench_select.py``), then a run
             SIGKILLed after its graph stage (and one inside it, before its marker) and
             rerun: time and uids against the clean run;
* ``small``  where the time of a 20k-row select goes: imports, Dask start-up, stages.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from common import D2SCALE, host_info  # noqa: E402

from d2scale.cli.bench import SECTIONS, SUITE  # noqa: E402
from d2scale.cli.flags import add_flag, flag_help  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # the scripts call `d2scale`: use the one installed beside this Python
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.workdir, exist_ok=True)
    sizes = args.size_list
    report = {"benchmark": "d2scale suite", "host": machine(), "versions": versions(),
              "sizes": sizes, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "load_start": load(), "sections": {}}  # fmt: skip
    for name in args.only.split(","):
        t0 = time.perf_counter()
        say(f"section {name} ...")
        report["sections"][name] = SECTION_RUNNERS[name](sizes, args)
        report["sections"][name]["section_s"] = round(time.perf_counter() - t0, 1)
        write(report, args.out)  # partial results survive a later failure
    report["load_end"] = load()
    write(report, args.out)
    say(f"wrote {args.out}/bench.json and {args.out}/bench.md")
    return 0


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    for param in SUITE.values():  # the flags of `d2scale bench`, written once there
        add_flag(p, param, help=flag_help(param))
    args = p.parse_args(argv)
    args.workdir = os.path.expanduser(args.workdir)
    bad = set(args.only.split(",")) - set(SECTIONS)
    if bad:  # one line and status 1, like every d2scale error
        _refuse(f"unknown section {sorted(bad)[0]!r}; choose from {', '.join(SECTIONS)}")
    try:
        args.size_list = [int(float(s)) for s in args.sizes.split(",")]
    except ValueError:
        _refuse(f"--sizes takes pool sizes separated by commas, e.g. 100000,1000000; got "
                f"{args.sizes!r}")  # fmt: skip
    if min(args.size_list) < 1:
        _refuse(f"--sizes must be positive; got {args.sizes!r}")
    return args


def _refuse(message: str) -> None:
    print(f"d2scale: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine facts


def machine() -> dict:
    import psutil

    return {**host_info(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("d2scale", "numpy", "faiss-cpu", "numba", "dask", "distributed", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def load() -> dict:
    """Load average and the busiest other processes (the machine may be shared)."""
    import psutil

    procs = []
    for p in psutil.process_iter(["pid", "name", "cpu_percent", "cmdline"]):
        if p.info["pid"] != os.getpid():
            p.cpu_percent(None)
            procs.append(p)
    time.sleep(1.0)
    busy = []
    for p in procs:
        try:
            busy.append((p.cpu_percent(None), " ".join(p.info["cmdline"] or [p.info["name"]])))
        except psutil.Error:
            continue
    busy.sort(reverse=True)
    return {"load_average_1m": round(os.getloadavg()[0], 2),
            "busiest": [{"cpu_percent": c, "command": cmd[:100]} for c, cmd in busy[:5]
                        if c > 5]}  # fmt: skip


# ---------------------------------------------------------------- sections


def pool_for(rows: int, args) -> str:
    import bench_select

    path, synth_s = bench_select.ensure_pool(args.workdir, rows)
    if synth_s is not None:
        say(f"made a {rows:,}-row pool in {synth_s} s")
    return path


def section_io(sizes: list[int], args) -> dict:
    """Reading a pool: metadata (uid + score columns) and embeddings, one task per shard."""
    results = [_read_child(pool_for(n, args), n) for n in sizes]
    return {"results": results, "note": "page cache warm: pools just written or reused"}


def _read_child(pool: str, rows: int) -> dict:
    """Run the read measurements in a fresh process (its memory and imports are its own)."""
    return {"rows": rows, **_json_of([sys.executable, os.path.join(HERE, "bench_io.py"), pool])}


def section_knn(sizes: list[int], args) -> dict:
    """``bench_knn.py`` at each size, its JSON kept whole."""
    argv = [sys.executable, os.path.join(HERE, "bench_knn.py"), "--sizes",
            ",".join(map(str, sizes)), "--workdir", os.path.join(args.workdir, "knn")]  # fmt: skip
    return _json_of(argv)


def section_mp(sizes: list[int], args) -> dict:
    """``d2scale mp`` at each size, and the baselines at ``--baseline-n``."""
    import bench_mp

    small = os.path.join(args.workdir, f"mp-graph-{args.baseline_n}")
    bench_mp.make_graph(small, args.baseline_n)
    warm = os.path.join(args.workdir, "mp-warmup.npy")
    bench_mp.run_mp(small, warm)  # compiles and caches the kernels
    base_rss = bench_mp.run_mp(small, warm)["peak_rss_mb"]
    out = {"baseline": bench_mp.baselines(small, args.baseline_n), "sizes": {}}
    for n in sizes:
        gdir = os.path.join(args.workdir, f"mp-graph-{n}")
        graph = bench_mp.make_graph(gdir, n)
        timed = bench_mp.time_mp(gdir, n, 3, args.workdir, base_rss)
        out["sizes"][str(n)] = {"graph": graph, "mp": timed}
    return out


def section_select(sizes: list[int], args) -> dict:
    """End-to-end select, then SIGKILL + rerun at two points, per size."""
    import bench_select

    results = []
    for n in sizes:
        pool = pool_for(n, args)
        clean = os.path.join(args.workdir, f"select-{n}-clean")
        _remove(clean)
        extra = (args.select_flags or "").split()
        entry = {"rows": n, **bench_select.run_select(pool, clean, extra)}
        entry["killed"] = [kill_and_rerun(pool, clean, n, point, args, extra)
                           for point in ("after-graph", "before-marker-graph")]  # fmt: skip
        results.append(entry)
    return {"results": results}


def kill_and_rerun(pool: str, clean: str, n: int, point: str, args, extra: list[str]) -> dict:
    """SIGKILL a select at ``point``, rerun it into the same directory; compare with clean."""
    out = os.path.join(args.workdir, f"select-{n}-killed")
    _remove(out)
    argv = [*D2SCALE, "select", "--metadata-dir", pool, "--out", out, "--fraction", "0.3",
            *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "D2SCALE_PAUSE_AT": point})  # fmt: skip
    for line in proc.stderr:
        if f"paused at {point}" in line:
            break
    killed_after = time.perf_counter() - t0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t1 = time.perf_counter()
    rerun = subprocess.run([*argv, "--quiet"], capture_output=True, text=True)
    rerun_s = time.perf_counter() - t1
    if rerun.returncode:
        return {"point": point, "error": rerun.stderr.strip()[-2000:]}
    with open(os.path.join(out, "run.json")) as f:
        record = json.load(f)
    same = np.array_equal(np.load(os.path.join(out, "uids.npy")),
                          np.load(os.path.join(clean, "uids.npy")))  # fmt: skip
    return {"point": point, "killed_after_s": round(killed_after, 2),
            "rerun_wall_s": round(rerun_s, 2), "identical_uids": bool(same),
            "reused": {k: v["reused"] for k, v in record["stages"].items()},
            "rerun_timings_s": record["timings_s"]}  # fmt: skip


def section_small(sizes: list[int], args) -> dict:
    """A 20k-row select: wall time, import and Dask start-up costs, stage times."""
    pool = pool_for(20_000, args)
    out = {
        "rows": 20_000,
        "startup": _json_of([sys.executable, os.path.join(HERE, "bench_startup.py")]),
    }
    for index in ("auto", "exact"):
        target = os.path.join(args.workdir, f"small-{index}")
        _remove(target)
        argv = [*D2SCALE, "select", "--metadata-dir", pool, "--out", target, "--quiet",
                "--index", index]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            out[index] = {"error": proc.stderr.strip()[-2000:]}
            continue
        with open(os.path.join(target, "run.json")) as f:
            record = json.load(f)
        out[index] = {"wall_s": round(wall, 2), "timings_s": record["timings_s"],
                      "graph_timings_s": (record.get("graph") or {}).get("timings"),
                      "graph_index": (record.get("graph") or {}).get("index")}  # fmt: skip
    return out


SECTION_RUNNERS = {"io": section_io, "knn": section_knn, "mp": section_mp,
                   "select": section_select, "small": section_small}  # fmt: skip


def _json_of(argv: list[str]) -> dict:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        return {"command": " ".join(argv), "error": proc.stderr.strip()[-3000:]}
    return json.loads(proc.stdout)


def _remove(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- output


def write(report: dict, out: str) -> None:
    from suite_table import render

    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(render(report))


if __name__ == "__main__":
    sys.exit(main())

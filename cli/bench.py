"""``d2scale bench``: the benchmark suite (``python -m benchmarks`` in a source checkout)."""

from __future__ import annotations

SUITE_FLAGS = {
    "--sizes": ("100000", "pool sizes, comma separated, e.g. 100000,1000000"),
    "--out": ("d2scale-bench", "directory for bench.json and bench.md"),
    "--workdir": (None, "cache of generated pools and graphs (default ~/.cache/d2scale-bench)"),
    "--only": (None, "sections to run: io,knn,mp,select,small (default all)"),
    "--baseline-n": (None, "nodes of the message-passing baselines (default 20000)"),
    "--select-flags": (None, "extra flags for d2scale select, in one quoted string (default none)"),
}


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmark suite (I/O, kNN graph, message passing, end-to-end select)",
        description="Runs `python -m benchmarks` of the source checkout d2scale is installed "
        "from (pip install -e .) and writes OUT/bench.json and OUT/bench.md (machine, "
        "versions, git revision, load).",
        epilog=epilog,
    )
    for flag, (default, text) in SUITE_FLAGS.items():
        shown = text if default is None or "default" in text else f"{text} (default {default})"
        p.add_argument(flag, default=default, help=shown)
    p.set_defaults(run=run)


def run(args) -> int:
    import os
    import subprocess
    import sys

    from d2scale.errors import D2ScaleError

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(root, "benchmarks", "__main__.py")):
        raise D2ScaleError(
            "the benchmark suite lives in the source checkout (benchmarks/); install d2scale "
            "from it with `pip install -e .` or run `python -m benchmarks` there."
        )
    argv = [sys.executable, "-m", "benchmarks"]
    for flag in SUITE_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            path_like = flag in ("--out", "--workdir")
            argv += [flag, os.path.abspath(value) if path_like else value]
    return subprocess.call(argv, cwd=root)

"""``d2scale bench``: the benchmark suite (``python -m benchmarks`` in a source checkout)."""

from __future__ import annotations

import argparse


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmark suite (I/O, kNN graph, message passing, end-to-end select)",
        description="Runs `python -m benchmarks` of the source checkout d2scale is installed "
        "from (pip install -e .): writes OUT/bench.json and OUT/bench.md (machine, versions, "
        "git revision). Options after the known ones are passed on.",
        epilog=epilog,
    )
    p.add_argument("--sizes", default="100000", help="pool sizes, e.g. 100000,1000000")
    p.add_argument("--out", default="d2scale-bench", metavar="DIR", help="output directory")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
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
    argv = [sys.executable, "-m", "benchmarks", "--sizes", args.sizes, "--out",
            os.path.abspath(args.out), *args.rest]  # fmt: skip
    return subprocess.call(argv, cwd=root)

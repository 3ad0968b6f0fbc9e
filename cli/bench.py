"""``d2scale bench``: the benchmark suite (``python -m benchmarks`` in a source checkout).

:data:`SUITE` holds the suite's flags, written once: ``python -m benchmarks`` reads its
defaults from here, and ``d2scale bench`` passes on only the flags given."""

from __future__ import annotations

from d2scale.params import Param

SECTIONS = ("io", "knn", "mp", "select", "small")
_SUITE = "benchmark suite"

SUITE: dict[str, Param] = {
    p.name: p
    for p in [
        Param("sizes", "str", "100000", "pool sizes, comma separated, e.g. 100000,1000000",
              _SUITE, ()),
        Param("out", "path", "d2scale-bench", "directory for bench.json and bench.md", _SUITE,
              ()),
        Param("workdir", "path", "~/.cache/d2scale-bench", "cache of generated pools and "
              "graphs (reused)", _SUITE, ()),
        Param("only", "str", ",".join(SECTIONS), "sections to run, comma separated", _SUITE,
              ()),
        Param("baseline_n", "int", 20_000, "nodes of the message-passing baselines", _SUITE,
              (), low=1),
        Param("select_flags", "str", None, "extra flags for d2scale select, in one quoted "
              "string", _SUITE, (), optional=True),
    ]
}  # fmt: skip


def add_parser(sub, epilog: str) -> None:
    from d2scale.cli.flags import add_flag, flag_help

    p = sub.add_parser(
        "bench",
        help="run the benchmark suite (I/O, kNN graph, message passing, end-to-end select)",
        description="Runs `python -m benchmarks` of the source checkout d2scale is installed "
        "from (pip install -e .) and writes OUT/bench.json and OUT/bench.md (machine, "
        "versions, git revision, load).",
        epilog=epilog,
    )
    for param in SUITE.values():  # None: not given, the suite's default applies
        add_flag(p, param, type=param.parse, default=None, help=flag_help(param))
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
    for param in SUITE.values():
        value = getattr(args, param.name)
        if value is not None:
            argv += [param.flag, os.path.abspath(value) if param.kind == "path" else str(value)]
    return subprocess.call(argv, cwd=root)

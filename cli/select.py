"""``d2scale select``: pool → kNN graph → D2 order → DataComp subset files."""

from __future__ import annotations

from d2scale.cli.flags import add_flags, values


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser(
        "select",
        help="select a subset of a pool with D2 Pruning",
        description="Build the kNN graph, run forward and reverse message passing and write "
        "DataComp subset files (uids*.npy), ranking.parquet and run.json.",
        epilog=epilog,
    )
    add_flags(p, "select")
    p.set_defaults(run=run)


def run(args) -> int:
    from d2scale.params import SelectParams
    from d2scale.progress import HEARTBEAT_S, Progress
    from d2scale.select.pipeline import check_log_not_an_output, check_log_outside_pool, select
    from d2scale.select.report import method_text
    from d2scale.select.sinks import ALL

    options = values(args, "select")
    quiet = options.pop("quiet")
    check_log_outside_pool(options["log_json"], options["metadata_dir"])
    check_log_not_an_output(options["log_json"], options["out"])
    progress = Progress(quiet, log_json=options["log_json"], heartbeat=HEARTBEAT_S)
    try:
        record = select(SelectParams(**options), progress)
    finally:
        progress.close()
    if not quiet:
        n = record["counts"]["n"]
        via = f" ({method_text(record)})" if len(record.get("steps") or []) > 1 else ""
        for fraction, count in record["counts"]["selected"].items():
            kept = "every row the filter passes" if fraction == ALL else f"fraction {fraction}"
            print(f"{kept}: {count:,} of {n:,} uids{via}")
    return 0

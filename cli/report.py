"""``d2scale report OUT``: (re)build report.html and report/*.png of an output directory."""

from __future__ import annotations


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser(
        "report",
        help="write report.html and PNG figures for a select output directory",
        description="Reads OUT/run.json, OUT/ranking.parquet, the graph stage directory and "
        "the pool's CLIP columns; writes OUT/report.html (self-contained, images embedded) "
        "and OUT/report/*.png.",
        epilog=epilog,
    )
    p.add_argument("out", metavar="OUT", help="output directory of `d2scale select` or a bucket")
    p.set_defaults(run=run)


def run(args) -> int:
    from d2scale.progress import HEARTBEAT_S, Progress
    from d2scale.select.report import write_report

    progress = Progress(heartbeat=HEARTBEAT_S)
    try:
        print(write_report(args.out, progress=progress))
    finally:
        progress.close()
    return 0

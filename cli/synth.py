"""``d2scale synth``: write a synthetic DataComp-format pool."""

from __future__ import annotations

from d2scale.cli.flags import add_flags, values


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic DataComp-format pool",
        epilog=epilog,
        description="CLIP-like geometry: clustered low-dimensional latents, a shared mean "
        "direction, correlated image/text embeddings, consistent CLIP scores, exact and near "
        "duplicates.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory the pool is written to")
    add_flags(p, "synth", required=("rows",))
    p.set_defaults(run=run)


def run(args) -> int:
    from d2scale.pool.synth import write_pool
    from d2scale.progress import HEARTBEAT_S, Progress, plural

    options = values(args, "synth")
    progress = Progress(heartbeat=HEARTBEAT_S)
    try:
        names = write_pool(args.out, **options, progress=progress)
    finally:
        progress.close()
    print(f"wrote {plural(options['rows'], 'row')} in {plural(len(names), 'parquet+npz pair')} "
          f"to {args.out}")  # fmt: skip
    return 0

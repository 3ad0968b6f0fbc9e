"""``d2scale`` command line: flags → parameters → library calls; one-line errors, exit 1.

Heavy libraries are imported inside each command, so ``d2scale mp`` starts without Dask,
faiss or pyarrow.
"""

from __future__ import annotations

import argparse
import sys

from d2scale.cli.vision import add_parser as add_vision_parser
from d2scale.errors import D2ScaleError

EPILOG = "Docs: README.md. Errors print one line and exit with status 1."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except D2ScaleError as e:
        print(f"d2scale: error: {e}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as e:
        print(f"d2scale: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("d2scale: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="d2scale",
        description="D2 Pruning data selection for DataComp-style pools.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_select(sub)
    _add_graph(sub)
    _add_mp(sub)
    _add_synth(sub)
    add_vision_parser(sub)
    return parser


def _version() -> str:
    from d2scale import __version__

    return f"d2scale {__version__}"


# --- shared flag groups -----------------------------------------------------------------


def _pool_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pool")
    g.add_argument(
        "--metadata-dir",
        help="pool directory or fsspec URL of <name>.parquet + "
        "<name>.npz pairs (default: the built-in 100k-row sample pool)",
    )
    g.add_argument("--embedding-model", choices=("l14", "b32"), default="l14")
    g.add_argument(
        "--feature-type",
        choices=("image", "text", "image_text"),
        default="image_text",
        help="image_text concatenates the two unit vectors",
    )


def _knn_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kNN graph")
    g.add_argument("--n-neighbors", type=int, default=5, help="k of the kNN graph (default 5)")
    g.add_argument(
        "--index",
        choices=("auto", "exact", "ivf"),
        default="auto",
        help="exact flat search or faiss IVF (auto: by pool size)",
    )
    g.add_argument(
        "--recall",
        type=float,
        default=0.95,
        help="IVF recall@k target used to tune nprobe (default 0.95)",
    )
    g.add_argument(
        "--memory-limit",
        type=_bytes,
        default=None,
        help="memory budget for index shards, e.g. 8GB (default: from the machine)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for every random choice")


def _run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument(
        "--scheduler",
        help="address of a running Dask scheduler (default: a local in-process cluster)",
    )
    g.add_argument("--workers", type=int, help="threads of the local cluster (default: all cores)")
    g.add_argument("--quiet", action="store_true", help="no progress lines")


def _d2_flags(p: argparse.ArgumentParser, gamma_default: float | None) -> None:
    g = p.add_argument_group("message passing (SPEC §1)")
    g.add_argument(
        "--gamma",
        type=float,
        default=gamma_default,
        required=gamma_default is None,
        help="reverse kernel width γr (1.0 for DataComp pools, 0.1 for vision)",
    )
    g.add_argument("--gamma-forward", type=float, default=1.0, help="forward kernel width γf")
    g.add_argument(
        "--mode",
        choices=("sum", "product"),
        default="sum",
        help="forward pass: s_i + Σ… (sum) or s_i · Σ… (product)",
    )
    g.add_argument(
        "--sampling",
        choices=("weighted", "absolute"),
        default="weighted",
        help="reverse update g_v -= exp(-γr·d)·g_u (weighted) or g_u (absolute)",
    )
    g.add_argument(
        "--greedy",
        choices=("exact", "standby"),
        default="exact",
        help="exact greedy (default) or the DataComp reference script's standby "
        "heuristic (approximate)",
    )
    g.add_argument(
        "--buckets",
        type=int,
        default=None,
        help="bucketed mode: drop cross-bucket edges, greedy per bucket in "
        "parallel, exact merge (approximate w.r.t. the full graph)",
    )


def _bytes(text: str) -> int:
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(text))
    except (ValueError, KeyError) as e:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from e


# --- commands ---------------------------------------------------------------------------


def _add_select(sub) -> None:
    p = sub.add_parser(
        "select",
        help="select a subset of a pool with D2 Pruning",
        description="Build the kNN graph, run forward and reverse message "
        "passing and write DataComp subset files.",
        epilog=EPILOG,
    )
    p.add_argument(
        "--fraction",
        default="0.3",
        help="fraction(s) of the pool to keep, e.g. 0.3 or 0.1,0.2,0.3 (default 0.3)",
    )
    p.add_argument("--out", default="d2scale-out", help="output directory (default ./d2scale-out)")
    p.add_argument("--graph", help="reuse a graph directory written by `d2scale graph`")
    p.add_argument("--score-column", help="score column (default clip_<model>_similarity_score)")
    p.add_argument(
        "--score-shift",
        type=float,
        default=0.115,
        help="added to every score (default 0.115, as the DataComp reference)",
    )
    _pool_flags(p)
    _knn_flags(p)
    _d2_flags(p, gamma_default=1.0)
    _run_flags(p)
    p.set_defaults(run=_run_select)


def _run_select(args) -> int:
    from d2scale.params import SelectParams, parse_fractions
    from d2scale.pipeline import select
    from d2scale.runner import Progress

    params = SelectParams(
        metadata_dir=args.metadata_dir,
        out=args.out,
        fractions=parse_fractions(args.fraction),
        embedding_model=args.embedding_model,
        feature_type=args.feature_type,
        score_column=args.score_column,
        score_shift=args.score_shift,
        n_neighbors=args.n_neighbors,
        gamma=args.gamma,
        gamma_forward=args.gamma_forward,
        mode=args.mode,
        sampling=args.sampling,
        greedy=args.greedy,
        buckets=args.buckets,
        index=args.index,
        recall=args.recall,
        memory_limit=args.memory_limit,
        device=args.device,
        graph=args.graph,
        seed=args.seed,
        scheduler=args.scheduler,
        workers=args.workers,
    )
    record = select(params, Progress(args.quiet))
    if not args.quiet:
        for fraction, count in record["counts"]["selected"].items():
            print(f"fraction {fraction}: {count:,} of {record['counts']['n']:,} uids")
    return 0


def _add_graph(sub) -> None:
    p = sub.add_parser(
        "graph",
        help="build and save the kNN graph of a pool",
        epilog=EPILOG,
        description="Writes GDIR/neighbors.npy (int64 N×K, pool order), "
        "GDIR/distances.npy (float32 N×K, Euclidean) and GDIR/meta.json; "
        "rerunning resumes an interrupted build.",
    )
    p.add_argument("--out", required=True, metavar="GDIR", help="graph directory")
    _pool_flags(p)
    _knn_flags(p)
    _run_flags(p)
    p.set_defaults(run=_run_graph)


def _run_graph(args) -> int:
    from d2scale.cli.graph import build_graph_dir
    from d2scale.runner import Progress

    build_graph_dir(args, Progress(args.quiet))
    return 0


def _add_mp(sub) -> None:
    p = sub.add_parser(
        "mp",
        help="message passing on a saved graph → pick order",
        description="Forward and reverse message passing (SPEC §1) on a graph "
        "directory; writes the int64 pick order.",
        epilog=EPILOG,
    )
    p.add_argument("--graph", required=True, metavar="GDIR")
    p.add_argument("--scores", required=True, metavar="S.npy", help="float scores, one per row")
    p.add_argument("--budget", type=int, default=None, help="picks to make (default: all rows)")
    p.add_argument("--out", required=True, metavar="ORDER.npy")
    p.add_argument("--forward-out", metavar="F.npy", help="also save the forward scores")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--quiet", action="store_true")
    _d2_flags(p, gamma_default=None)
    p.set_defaults(run=_run_mp)


def _run_mp(args) -> int:
    from d2scale.cli.mp import run_mp

    return run_mp(args)


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic DataComp-format pool",
        epilog=EPILOG,
        description="CLIP-like geometry: clustered low-dimensional latents, a "
        "shared mean direction, correlated image/text embeddings, consistent "
        "CLIP scores, exact and near duplicates.",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--layout",
        choices=("f16-compressed", "f16-stored", "f32-compressed", "f32-stored", "mixed"),
        default="f16-compressed",
        help="npz member dtype and zip storage (mixed cycles through all four by shard)",
    )
    p.set_defaults(run=_run_synth)


def _run_synth(args) -> int:
    from d2scale.synth import write_pool

    names = write_pool(
        args.out, rows=args.rows, shards=args.shards, seed=args.seed, layout=args.layout
    )
    print(f"wrote {args.rows:,} rows in {len(names)} parquet+npz pairs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

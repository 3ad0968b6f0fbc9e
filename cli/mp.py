"""``d2scale mp``: message passing on a saved graph. Imports only NumPy and the engine."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from d2scale.cli.flags import add_flags, values
from d2scale.errors import D2ScaleError


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser(
        "mp",
        help="message passing on a saved graph → pick order",
        description="Forward and reverse message passing (SPEC §1) on a graph directory; "
        "writes the int64 pick order.",
        epilog=epilog,
    )
    p.add_argument("--graph", required=True, metavar="GDIR", help="graph directory")
    p.add_argument("--scores", required=True, metavar="S.npy", help="float scores, one per row")
    p.add_argument("--out", required=True, metavar="ORDER.npy", help="pick order file")
    p.add_argument(
        "--forward-out", metavar="F.npy", help="also save the forward scores (default: not saved)"
    )
    add_flags(p, "mp", required=("gamma",))
    p.set_defaults(run=run)


def load_scores(path: str, n: int) -> np.ndarray:
    """A 1-D float array of ``n`` finite scores from ``path`` (.npy)."""
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise D2ScaleError(
                    f"scores file {path} is not a .npy file (write it with numpy.save)"
                )
        scores = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise D2ScaleError(f"scores file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise D2ScaleError(f"cannot read scores file {path}: {e}") from None
    if scores.ndim != 1 or scores.dtype.kind not in "iuf":
        raise D2ScaleError(
            f"{path} must hold a 1-D array of real numbers, found {scores.dtype} {scores.shape}"
        )
    if scores.shape[0] != n:
        raise D2ScaleError(f"{path} has {scores.shape[0]} scores but the graph has {n} rows")
    scores = scores.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise D2ScaleError(f"{path}: score at row {int(bad[0])} is NaN or inf")
    return scores


def check_outputs(args) -> None:
    """Refuse an output file that is an input (the scores, a file of the graph) or the other
    output: one write would replace what another needs."""
    taken = {os.path.realpath(args.scores): "--scores"}
    for name in ("neighbors.npy", "distances.npy", "meta.json", "lists.npy"):
        taken[os.path.realpath(os.path.join(args.graph, name))] = f"--graph's {name}"
    for flag, path in (("--out", args.out), ("--forward-out", args.forward_out)):
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in taken:
            raise D2ScaleError(
                f"{flag} {path} is the same file as {taken[real]}; give another path."
            )
        taken[real] = flag


def run(args) -> int:
    from d2scale.d2 import d2_order
    from d2scale.graph.store import load_graph
    from d2scale.io import save_npy
    from d2scale.progress import HEARTBEAT_S, Progress

    t0 = time.perf_counter()
    options = values(args, "mp")
    check_outputs(args)
    knn, _ = load_graph(args.graph, mmap=True, check_ids=False)  # symmetrize checks them
    scores = load_scores(args.scores, knn.n)
    progress = Progress(options["quiet"], heartbeat=HEARTBEAT_S)  # speaks up every 10 s
    try:
        progress.working(f"message passing on {knn.n:,} nodes")
        result = d2_order(knn, scores, **{k: v for k, v in options.items() if k != "quiet"})
    finally:
        progress.close()
    if args.forward_out:  # first: the pick order, written last, says the run is complete
        save_npy(args.forward_out, result.forward)
    save_npy(args.out, np.asarray(result.order, dtype=np.int64))  # int64 already: no copy
    if not options["quiet"]:
        seconds = ", ".join(f"{k} {v:.2f}s" for k, v in result.stats["seconds"].items())
        print(
            f"{result.order.shape[0]:,} picks of {knn.n:,} nodes ({result.n_edges:,} edges) on "
            f"{result.stats['device']} in {time.perf_counter() - t0:.2f}s [{seconds}] "
            f"-> {args.out}",
            file=sys.stderr,
        )
    return 0

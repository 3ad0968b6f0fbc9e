"""``d2scale embed`` and ``d2scale export``: the web-data ends (webdataset shards in and out).

``add_parser(sub, epilog)`` registers both commands; torch, open_clip and webdataset are
imported only when a command runs.
"""

from __future__ import annotations

import sys

from d2scale.cli.flags import add_flag, flag_help
from d2scale.params import PARAMS, Param
from d2scale.web.params import MODEL_PREFIXES, RANDOM, WEB


def add_parser(sub, epilog: str) -> None:
    """Register ``embed`` and ``export`` on an ``add_subparsers()`` object."""
    add_embed_parser(sub, epilog)
    add_export_parser(sub, epilog)


def add_embed_parser(sub, epilog: str) -> None:
    p = sub.add_parser(
        "embed",
        help="open_clip embeddings of webdataset shards → DataComp parquet+npz pairs",
        description="Reads webdataset shards, embeds images and captions with open_clip and "
        "writes one <shard>.parquet + <shard>.npz pair per shard (resumable per shard).",
        epilog=epilog,
    )
    p.add_argument(
        "--shards",
        required=True,
        metavar="PATTERN",
        help="shard URLs: brace pattern or glob, local or fsspec (e.g. 'pool/{00000..00127}.tar')",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output pool directory")
    _flag(p, WEB["model"])
    p.add_argument(
        "--pretrained",
        metavar="TAG|PATH|none",
        help="required: an open_clip pretrained tag (e.g. openai), a local checkpoint file, or "
        f"{RANDOM} for random weights (meaningless embeddings for tests; a warning, recorded in "
        "embed.json)",
    )
    p.add_argument(
        "--prefix",
        help=f"npz key prefix (default: {_prefixes()}, else from the name)",
    )
    p.add_argument(
        "--model-config",
        metavar="FILE.json",
        help="an open_clip model config registering a custom architecture named after the file",
    )
    for key in ("batch_size", "device", "threads", "seed"):
        _flag(p, WEB[key])
    _output_flags(p)
    p.set_defaults(run=run_embed)


def _prefixes() -> str:
    return ", ".join(f"{prefix} for {model}" for model, prefix in MODEL_PREFIXES.items())


def _flag(p, param: Param) -> None:
    """``param``'s flag with its default in the help; a value out of range is refused by the
    command's parameter check (``--batch-size must be …``)."""
    add_flag(p, param, help=flag_help(param), **({"type": int} if param.kind == "int" else {}))


def _output_flags(p) -> None:
    """``--quiet`` and ``--log-json``, as the other long-running commands have them."""
    add_flag(p, PARAMS["quiet"], help="no progress or summary (warnings stay)")
    add_flag(p, PARAMS["log_json"])


def _progress(args):
    from d2scale.progress import Progress

    return Progress(args.quiet, log_json=args.log_json)


def _needs_vision_extra(command: str, error: ImportError):
    from d2scale.errors import D2ScaleError

    return D2ScaleError(
        f"d2scale {command} needs the vision extra ({error.name or error} is missing): "
        "pip install -c constraints.txt 'd2scale[vision]'"
    )


def run_embed(args) -> int:
    try:
        from d2scale.web.embed import MANIFEST as EMBED_MANIFEST
        from d2scale.web.embed import EmbedParams, embed
        from d2scale.web.webdata import check_log_json, expand_shards
    except ImportError as e:
        raise _needs_vision_extra("embed", e) from None

    params = EmbedParams(
        shards=args.shards,
        out=args.out,
        model=args.model,
        pretrained=args.pretrained,
        prefix=args.prefix,
        model_config=args.model_config,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
        seed=args.seed,
    )
    inputs = [args.pretrained, args.model_config, *expand_shards(args.shards)]
    check_log_json(args.log_json, inputs, args.out, (EMBED_MANIFEST,))
    progress = _progress(args)
    try:
        record = embed(params, progress)
    finally:
        progress.close()
    _say_embedded(record, args.out, args.quiet)
    return 0


def _say_embedded(record: dict, out: str, quiet: bool) -> None:
    """The summary of this run, not of the directory (warnings came from ``embed``)."""
    run, total = record["run"], record["totals"]
    if quiet:
        return
    if not run["shards"]:
        line = (
            f"nothing to embed: all {record['resumed_shards']} shards are already in {out} "
            f"({total['written']:,} of {total['samples']:,} samples written)"
        )
    else:
        line = f"{run['written']:,} of {run['samples']:,} samples embedded from {run['shards']} "
        line += f"shards -> {out}"
        if record["resumed_shards"]:
            line += f" ({record['resumed_shards']} shards were done before)"
    print(line, file=sys.stderr)


def add_export_parser(sub, epilog: str) -> None:
    p = sub.add_parser(
        "export",
        help="write webdataset shards holding exactly the samples of a subset file",
        description="Copies every sample whose uid is in the subset file, with all its members, "
        "into shards of a fixed size (DataComp resharder semantics; resumable).",
        epilog=epilog,
    )
    p.add_argument("--uids", required=True, metavar="FILE", help="subset file (u8,u8 .npy)")
    p.add_argument("--shards", required=True, metavar="PATTERN", help="input shards (as embed)")
    p.add_argument("--out", required=True, metavar="DIR", help="output shard directory")
    _flag(p, WEB["samples_per_shard"])
    p.add_argument(
        "--require-all",
        action="store_true",
        help="exit with an error when some uid of the file is in none of the shards (when "
        "none of them is, that is always an error)",
    )
    _output_flags(p)
    p.set_defaults(run=run_export)


def run_export(args) -> int:
    try:
        from d2scale.web.export import MANIFEST as EXPORT_MANIFEST
        from d2scale.web.export import MISSING, ExportParams, export
        from d2scale.web.webdata import check_log_json, expand_shards
    except ImportError as e:
        raise _needs_vision_extra("export", e) from None

    params = ExportParams(
        uids=args.uids,
        shards=args.shards,
        out=args.out,
        samples_per_shard=args.samples_per_shard,
        require_all=args.require_all,
    )
    inputs = [args.uids, *expand_shards(args.shards)]
    check_log_json(args.log_json, inputs, args.out, (EXPORT_MANIFEST, MISSING))
    progress = _progress(args)
    try:
        record = export(params, progress)
    finally:
        progress.close()
    c = record["counts"]
    if not args.quiet:
        done = "nothing to export: already complete, " if record["already_complete"] else ""
        print(
            f"{done}{c['written']:,} samples in {record['shards_written']} shards -> {args.out} "
            f"({c['read']:,} read, {c['duplicates']:,} repeated uids, {c['no_uid']:,} without uid)",
            file=sys.stderr,
        )
    return 0

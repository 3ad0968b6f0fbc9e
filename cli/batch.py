"""``d2scale batch JOBS``: selections over many buckets from a YAML or TOML jobs file."""

from __future__ import annotations

import argparse
import sys

from d2scale.cli.flags import add_flag, flag_help
from d2scale.params import PARAMS
from d2scale.progress import plural

FLAGS = ("concurrency", "scheduler", "scheduler_file", "workers", "quiet", "log_json")


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser(
        "batch",
        help="run selections over the buckets of a jobs file",
        description="Runs `select` for every bucket of JOBS (YAML or TOML: out, defaults, "
        "buckets; `global: true` selects once over their union), each into OUT/NAME/, and "
        "writes OUT/summary.json, a report per bucket and OUT/index.html. Completed buckets "
        "are skipped on a rerun; the exit status is 1 when any bucket failed.",
        epilog=epilog,
    )
    p.add_argument("jobs", metavar="JOBS", help="jobs file (.yaml, .yml or .toml)")
    p.add_argument("--dry-run", action="store_true", help="list what would run; write nothing")
    group = p.add_argument_group("execution (override the jobs file)")
    for name in FLAGS:  # None: not given, the jobs file's value (or the table's) applies
        param = PARAMS[name]
        if param.kind == "bool":
            add_flag(group, param)
        else:
            add_flag(group, param, type=param.parse, default=None, help=flag_help(param))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    from d2scale.progress import HEARTBEAT_S, Progress
    from d2scale.select.batch import (
        check_outside_pools,
        load_jobs,
        parse_batch,
        plan,
        run_batch,
        summary_table,
    )

    overrides = {k: getattr(args, k) for k in ("concurrency", "scheduler", "workers")}
    if args.scheduler_file is not None:  # relative to where the command runs
        overrides["scheduler_file"] = os.path.abspath(args.scheduler_file)
    batch = parse_batch(load_jobs(args.jobs), os.path.dirname(os.path.abspath(args.jobs)),
                        overrides)  # fmt: skip
    check_outside_pools(batch, args.log_json)
    if args.dry_run:
        return _dry_run(batch, plan(batch))
    progress = Progress(args.quiet, log_json=args.log_json, heartbeat=HEARTBEAT_S)
    try:
        records = run_batch(batch, progress)
    finally:
        progress.close()
    if not args.quiet:
        print(summary_table(records))
    failed = [r["name"] for r in records if r["status"] != "ok"]
    if failed:
        print(f"d2scale: error: {len(failed)} of {plural(len(records), 'bucket')} failed "
              f"({', '.join(failed)}); see {batch.out}/summary.json", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _dry_run(batch, entries: list[dict]) -> int:
    print(f"dry run: {plural(len(batch.buckets), 'bucket')} → {batch.out}"
          + (" (global: one selection over their union)" if batch.is_global else ""))  # fmt: skip
    for e in entries:
        rows = "?"
        if "rows" in e:
            rows = f"{plural(e['rows'], 'row')} in {plural(e['shards'], 'shard')}"
        params = " ".join(f"{k}={v}" for k, v in e["params"].items())
        line = f"  {e['name']}: {e['action']}: {e['metadata_dir']} ({rows}) → {e['out']}"
        print(line + (f" [{params}]" if params else "")
              + (f": {e['error']}" if e.get("error") else ""))  # fmt: skip
    errors = [e["name"] for e in entries if e["action"] == "error"]
    if errors:
        which = f"bucket{'s' if len(errors) > 1 else ''} {', '.join(errors)}"
        print(f"d2scale: error: {which} cannot be opened (see above)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0

"""``d2scale batch``: many selections from one jobs file (YAML or TOML).

A jobs file names an output directory, defaults for any ``select`` parameter and a list of
buckets (a pool directory, a glob of directories or of ``.parquet`` files, or an fsspec URL,
each with its own overrides)::

    out: OUTDIR                                       # bucket NAME writes OUTDIR/NAME/
    defaults: {fraction: 0.3, feature_type: image}    # any select parameter, by its name
    buckets:
      - {name: a, metadata_dir: /pools/a}
      - {name: b, metadata_dir: /pools/b, fraction: 0.2}

Every key is checked against the parameter table before anything runs. Buckets run in
sequence (or ``concurrency`` at a time) on one Dask client; a failing bucket does not stop
the others; a bucket whose ``run.json`` matches its pool and parameters is skipped, so a
rerun redoes only what failed or changed. ``global: true`` selects once over the union of
the buckets (``OUTDIR/global/``). ``OUTDIR/summary.json`` gets one record per bucket.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from d2scale import io
from d2scale.errors import D2ScaleError
from d2scale.params import PARAMS, SelectParams
from d2scale.pool.buckets import pool_directories, resolve_pool, union_pool
from d2scale.pool.sources import Pool
from d2scale.progress import Progress, ProgressFn
from d2scale.select.chain import chain_steps, keep_rule

SUMMARY = "summary.json"
GLOBAL_NAME = "global"
JOB_KEYS = ("out", "defaults", "buckets", "global", "name", "concurrency", "scheduler",
            "scheduler_file", "workers")  # fmt: skip
EXECUTION_KEYS = ("scheduler", "scheduler_file", "workers", "concurrency")
BATCH_SET = ("out", "scheduler", "scheduler_file", "workers", "log_json", "report")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Bucket:
    """One selection of a batch: its name, pool spec and full parameters."""

    name: str
    spec: str
    params: SelectParams


@dataclass
class Batch:
    """A parsed, checked jobs file."""

    out: str
    buckets: list[Bucket]
    is_global: bool = False
    global_name: str = GLOBAL_NAME
    global_params: SelectParams | None = None
    concurrency: int = 1
    scheduler: str | None = None
    scheduler_file: str | None = None
    workers: int | None = None


# ---------------------------------------------------------------- reading the jobs file


def load_jobs(path: str) -> dict:
    """The jobs file at ``path`` (``.yaml``/``.yml`` or ``.toml``) as a dict."""
    if not os.path.isfile(path):
        raise D2ScaleError(f"jobs file {path} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".toml":
        doc = _toml(path)
    elif suffix in (".yaml", ".yml"):
        doc = _yaml(path)
    else:
        raise D2ScaleError(f"jobs file {path} must end in .yaml, .yml or .toml")
    if not isinstance(doc, dict):
        raise D2ScaleError(f"jobs file {path} must hold a mapping with out, defaults, buckets")
    return doc


def _yaml(path: str):
    import yaml

    class Loader(yaml.SafeLoader):
        """YAML's safe loader refusing a key given twice in one mapping (YAML keeps the
        last silently; TOML refuses it too)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # left to the loader's own check
                if key in seen:
                    raise D2ScaleError(
                        f"jobs file {path}, line {key_node.start_mark.line + 1}: the key "
                        f"{key!r} is given twice in one mapping; keep one."
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=Loader)  # noqa: S506 - a SafeLoader
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise D2ScaleError(f"cannot parse jobs file {path}: {_one_line(e)}") from None


def _toml(path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise D2ScaleError(f"cannot parse jobs file {path}: {_one_line(e)}") from None


def parse_batch(doc: dict, base_dir: str = ".", overrides: dict | None = None) -> Batch:
    """A checked :class:`Batch` from a jobs document; relative local paths are resolved
    against ``base_dir`` (the jobs file's directory); ``overrides`` (CLI flags) win over the
    file's execution keys."""
    unknown = sorted(set(doc) - set(JOB_KEYS))
    if unknown:
        raise D2ScaleError(
            f"jobs file: unknown key {unknown[0]!r}; the top level takes {', '.join(JOB_KEYS)}."
        )
    if not isinstance(doc.get("out"), str) or not doc["out"].strip():
        raise D2ScaleError("jobs file: 'out' (the output directory) is required.")
    execution = {k: doc.get(k, PARAMS[k].default) for k in EXECUTION_KEYS}
    if execution["scheduler_file"] is not None:
        execution["scheduler_file"] = _resolve(str(execution["scheduler_file"]), base_dir)
    execution.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for key, value in execution.items():
        execution[key] = _value(key, value, "jobs file")
    out = _resolve(doc["out"], base_dir)
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise D2ScaleError("jobs file: 'defaults' must be a mapping of select parameters.")
    defaults = {k: _value(k, v, "defaults") for k, v in defaults.items()}
    is_global = _value_bool(doc.get("global", False))
    _refuse_unused_keys(doc, execution["concurrency"], is_global)
    buckets = _buckets(doc.get("buckets"), defaults, out, base_dir, is_global)
    batch = Batch(out, buckets, is_global, concurrency=execution["concurrency"],
                  scheduler=execution["scheduler"], scheduler_file=execution["scheduler_file"],
                  workers=execution["workers"])  # fmt: skip
    if is_global:
        batch.global_name = _bucket_name(doc.get("name", GLOBAL_NAME), "jobs file 'name'")
        spec = " + ".join(b.spec for b in buckets)
        batch.global_params = _params(defaults, spec, io.join(out, batch.global_name), "global")
    return batch


def _refuse_unused_keys(doc: dict, concurrency: int, is_global: bool) -> None:
    """``name`` names the one selection of a global job; ``concurrency`` runs several
    buckets' selections at once: each alone would change nothing."""
    if not is_global and "name" in doc:
        raise D2ScaleError(
            "jobs file: 'name' names the selection of a global job (global: true); without "
            "it each bucket is named by its own 'name': drop it."
        )
    if is_global and concurrency != 1:
        raise D2ScaleError(
            f"concurrency {concurrency} runs buckets at once, but a global job (global: true) "
            "runs one selection: drop it."
        )


def _buckets(raw, defaults: dict, out: str, base_dir: str, is_global: bool) -> list[Bucket]:
    if not isinstance(raw, list) or not raw:
        raise D2ScaleError("jobs file: 'buckets' must be a non-empty list.")
    buckets, seen = [], set()
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise D2ScaleError(f"jobs file: bucket {i + 1} must be a mapping with name and "
                               "metadata_dir.")  # fmt: skip
        name = _bucket_name(entry.get("name"), f"bucket {i + 1}")
        if name in seen:
            raise D2ScaleError(f"jobs file: two buckets are named {name!r}; names must differ.")
        seen.add(name)
        where = f"bucket {name!r}"
        spec = entry.get("metadata_dir")
        if not isinstance(spec, str) or not spec.strip():
            raise D2ScaleError(f"{where}: 'metadata_dir' (a directory, glob or URL) is required.")
        own = {k: v for k, v in entry.items() if k not in ("name", "metadata_dir")}
        if is_global and own:
            raise D2ScaleError(
                f"{where}: {sorted(own)[0]!r} cannot be set per bucket in a global job "
                "(global: true selects once); put it under 'defaults'."
            )
        own = {k: _value(k, v, where) for k, v in own.items()}
        spec = _resolve(spec, base_dir)
        buckets.append(Bucket(name, spec, _params({**defaults, **own}, spec,
                                                  io.join(out, name), where)))  # fmt: skip
    return buckets


def _params(values: dict, spec: str, out: str, where: str) -> SelectParams:
    """Checked as ``select`` checks them before any work: values, methods and their step
    options, and a fraction given twice."""
    try:
        params = SelectParams(**values, metadata_dir=spec, out=out).validate()
        keep_rule(params, chain_steps(params))
        return params
    except D2ScaleError as e:
        raise D2ScaleError(f"{where}: {e}") from None


def _value(name: str, value, where: str):
    """``value`` of parameter ``name`` checked against the table (strings parsed as flags)."""
    p = PARAMS.get(name)
    settable = p is not None and ("select" in p.commands or name in EXECUTION_KEYS)
    if not settable or (where != "jobs file" and name in BATCH_SET):
        what = "set by the batch" if p is not None and name in BATCH_SET else "not a parameter"
        raise D2ScaleError(
            f"{where}: {name!r} is {what}; buckets and defaults take the parameters of "
            "`d2scale select` (fraction, n_neighbors, gamma, …; see `d2scale select --help`)."
        )
    try:
        if isinstance(value, str) and p.kind in ("int", "float", "fractions", "bytes"):
            return p.parse(value)
        if p.kind == "fractions" and isinstance(value, (int, float)):
            value = [value]
        if p.kind == "steps" and isinstance(value, str):
            value = [value]
        if p.kind == "fractions" and isinstance(value, list):
            value = sorted(value) if all(isinstance(v, (int, float)) for v in value) else value
        return p.check(value)
    except D2ScaleError as e:
        raise D2ScaleError(f"{where}: {e}") from None


def _value_bool(value) -> bool:
    if not isinstance(value, bool):
        raise D2ScaleError(f"jobs file: 'global' must be true or false; got {value!r}.")
    return value


def _bucket_name(name, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in (SUMMARY, "index.html"):
        raise D2ScaleError(
            f"jobs file: {where} needs a 'name' of letters, digits, '.', '_' or '-' (it names "
            f"the output directory); got {name!r}."
        )
    return name


def _resolve(path: str, base_dir: str) -> str:
    if not io.is_local(path):
        return path
    path = os.path.expanduser(io.local_path(path))
    return os.path.normpath(os.path.join(base_dir, path))


def check_outside_pools(batch: Batch, log_json: str | None = None) -> None:
    """Refuse, before any work, an ``out`` in a bucket's pool (each bucket would fail, and
    summary.json and index.html would be written into the pool), and a ``--log-json`` in a
    bucket's pool or that is a file the batch writes (it would be replaced)."""
    from d2scale.select.pipeline import (
        check_log_not_an_output,
        check_log_outside_pool,
        check_out_outside_pool,
    )
    from d2scale.select.report import INDEX_HTML

    for bucket in batch.buckets:
        for directory in pool_directories(bucket.spec):
            check_out_outside_pool(batch.out, directory, "the batch's out", "an 'out'")
            check_log_outside_pool(log_json, directory)
    outs = [b.params.out for b in batch.buckets]
    for out in [batch.global_params.out] if batch.global_params else outs:
        check_log_not_an_output(log_json, out)
    if log_json not in (None, "-") and io.is_local(log_json) and io.is_local(batch.out):
        log = os.path.realpath(io.local_path(log_json))
        for name in (SUMMARY, INDEX_HTML):
            if log == os.path.realpath(io.join(io.local_path(batch.out), name)):
                raise D2ScaleError(
                    f"the JSON log {log_json} is the batch's {name}; choose another --log-json."
                )


# ---------------------------------------------------------------- running


def run_batch(batch: Batch, progress: ProgressFn | None = None, client=None) -> list[dict]:
    """Run every bucket (or the global selection); write ``summary.json``, the reports and
    the index page; return the summary records."""
    from d2scale.backends import dask_client

    progress = progress or Progress()
    check_outside_pools(batch)
    io.check_writable(batch.out)
    if client is None:
        with dask_client(batch.scheduler, batch.workers, batch.scheduler_file) as own:
            return run_batch(batch, progress, own)
    started = time.perf_counter()
    if batch.is_global:
        records = _run_global(batch, client, progress)
    else:
        records = _run_buckets(batch, client, progress)
    io.save_json(io.join(batch.out, SUMMARY), records)
    from d2scale.select.report import write_index

    write_index(batch.out, records, seconds=time.perf_counter() - started)
    return records


def _run_buckets(batch: Batch, client, progress: ProgressFn) -> list[dict]:
    total = len(batch.buckets)
    done: list[int] = []

    def one(bucket: Bucket) -> dict:
        record = run_bucket(bucket, client, _scoped(progress, bucket.name))
        done.append(1)
        progress(f"batch: {len(done)}/{total} buckets")
        return record

    progress(f"batch: 0/{total} buckets")
    if batch.concurrency == 1:  # in this thread: a Ctrl-C stops the running bucket at once
        return [one(bucket) for bucket in batch.buckets]
    pool = ThreadPoolExecutor(max_workers=batch.concurrency)
    try:
        return list(pool.map(one, batch.buckets))
    finally:  # after a Ctrl-C: buckets not started are dropped (running ones end first)
        pool.shutdown(wait=False, cancel_futures=True)


def run_bucket(bucket: Bucket, client, progress: ProgressFn) -> dict:
    """Select one bucket (or skip it when complete); a failure becomes the record's error."""
    t0 = time.perf_counter()
    record = {"name": bucket.name, "status": "ok", "rows": None, "kept": None, "seconds": None,
              "error": None, "metadata_dir": bucket.spec, "out": bucket.params.out,
              "skipped": False, "kept_by_fraction": None, "report": None}  # fmt: skip
    try:
        pool = resolve_pool(bucket.spec)
        record["rows"] = pool.n
        record["skipped"] = _select_unless_complete(bucket.params, pool, client, progress)
        record.update(_kept(io.read_json(io.join(bucket.params.out, "run.json"))))
        record["report"] = _report(bucket.params.out, progress, pool)
    except D2ScaleError as e:
        record.update(status="failed", error=_one_line(e))
    except Exception as e:  # noqa: BLE001 - a failing bucket must not stop the others
        record.update(status="failed", error=_one_line(f"{type(e).__name__}: {e}"))
    record["seconds"] = round(time.perf_counter() - t0, 3)
    progress(f"{record['status']}" + (f": {record['error']}" if record["error"] else ""))
    return record


def completed(params: SelectParams, pool: Pool) -> dict | None:
    """The ``run.json`` of ``params.out`` if it is from this pool and these parameters."""
    path = io.join(params.out, "run.json")
    if not io.exists(path):
        return None
    try:
        run = io.read_json(path)
    except (OSError, ValueError):
        return None
    if run.get("input", {}).get("fingerprint") != pool.fingerprint:
        return None
    return (
        run if _result_params(run.get("params", {})) == _result_params(params.to_dict()) else None
    )


# select parameters that never change the selected rows (where and how a run executes)
NO_RESULT = ("out", "scheduler", "scheduler_file", "workers", "log_json", "report", "device",
             "memory_limit")  # fmt: skip


def _result_params(d: dict) -> dict:
    """The select parameters of a ``run.json`` (or ``to_dict``) that change its result."""
    keep = {name: d.get(name) for name, p in PARAMS.items()
            if "select" in p.commands and name not in NO_RESULT}  # fmt: skip
    return json.loads(json.dumps(keep, default=str))


def _kept(run: dict) -> dict:
    selected = run["counts"]["selected"]
    kept = max(selected.values())  # the largest fraction's rows
    return {"rows": run["counts"]["n"], "kept": kept, "kept_by_fraction": selected}


def _report(out: str, progress: ProgressFn, pool: Pool) -> str | None:
    """Write the bucket's report unless it exists (a failure is reported; the selection
    stands)."""
    from d2scale.select.report import write_report

    if io.exists(io.join(out, "report.html")):
        return io.join(out, "report.html")
    try:
        return write_report(out, pool, progress)
    except (D2ScaleError, OSError, ValueError) as e:
        progress(f"report not written: {_one_line(e)}")
        return None


def _run_global(batch: Batch, client, progress: ProgressFn) -> list[dict]:
    """One selection over the union of the buckets; one record per bucket (its rows and how
    many of them the global selection keeps)."""
    t0 = time.perf_counter()
    params = batch.global_params
    base = {"status": "ok", "error": None, "out": params.out, "skipped": False, "report": None}
    rows = kept = [None] * len(batch.buckets)
    try:
        pools = [resolve_pool(b.spec) for b in batch.buckets]
        rows = [p.n for p in pools]
        pool = union_pool(pools, [b.name for b in batch.buckets])
        scoped = _scoped(progress, batch.global_name)
        base["skipped"] = _select_unless_complete(params, pool, client, scoped)
        base["report"] = _report(params.out, scoped, pool)
        kept = kept_per_bucket(params, rows)
    except D2ScaleError as e:
        base.update(status="failed", error=_one_line(e))
    except Exception as e:  # noqa: BLE001 - reported in the summary like a bucket's failure
        base.update(status="failed", error=_one_line(f"{type(e).__name__}: {e}"))
    seconds = round(time.perf_counter() - t0, 3)
    return [
        {
            "name": b.name,
            **base,
            "rows": n,
            "kept": k,
            "seconds": seconds,
            "metadata_dir": b.spec,
            "global": batch.global_name,
        }  # fmt: skip
        for b, n, k in zip(batch.buckets, rows, kept, strict=True)
    ]


def _select_unless_complete(params: SelectParams, pool: Pool, client, progress) -> bool:
    """Run the selection unless ``params.out`` already holds it; True when skipped."""
    from d2scale.select.pipeline import select

    if completed(params, pool) is not None:
        progress("complete (run.json matches the pool and parameters): skipped")
        return True
    select(params, progress, client=client, pool=pool)
    return False


def kept_per_bucket(params: SelectParams, rows: list[int]) -> list[int]:
    """How many rows of each bucket the global selection (largest fraction) keeps."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(io.join(params.out, "ranking.parquet"), columns=["rank"])
    rank = table.column("rank").to_numpy(zero_copy_only=False)
    rank = np.nan_to_num(rank.astype(np.float64), nan=-1.0)
    budget = max(io.read_json(io.join(params.out, "run.json"))["counts"]["selected"].values())
    picked = (rank >= 0) & (rank < budget)
    bounds = np.concatenate([[0], np.cumsum(rows)])
    return [int(picked[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _scoped(progress: ProgressFn, name: str) -> ProgressFn:
    if isinstance(progress, Progress):
        return progress.scoped(name)
    return lambda message: progress(f"{name}: {message}")


def _one_line(error) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 500 else text[:497] + "..."


# ---------------------------------------------------------------- dry run


def plan(batch: Batch) -> list[dict]:
    """What :func:`run_batch` would do, without writing anything: per bucket its pool size
    and whether it would run, be skipped (complete) or fail to open; a global job adds one
    entry for the selection over the union."""
    entries, pools = [], []
    for bucket in batch.buckets:
        entry = {"name": bucket.name, "metadata_dir": bucket.spec, "out": bucket.params.out,
                 "params": _changed(bucket.params)}  # fmt: skip
        try:
            pool = resolve_pool(bucket.spec)
            entry.update(rows=pool.n, shards=len(pool.shards))
            entry["action"] = (
                "part of the global selection"
                if batch.is_global
                else ("run" if completed(bucket.params, pool) is None else "skip (complete)")
            )
            pools.append(pool)
        except D2ScaleError as e:
            entry.update(action="error", error=_one_line(e))
        entries.append(entry)
    if batch.is_global:
        params = batch.global_params
        entry = {"name": batch.global_name, "metadata_dir": params.metadata_dir,
                 "out": params.out, "params": _changed(params),
                 "rows": sum(p.n for p in pools), "shards": sum(len(p.shards) for p in pools),
                 "action": "error" if len(pools) < len(batch.buckets) else "run"}  # fmt: skip
        if entry["action"] == "run":
            union = union_pool(pools, [b.name for b in batch.buckets])
            entry["action"] = "run" if completed(params, union) is None else "skip (complete)"
        entries.append(entry)
    return entries


def _changed(params: SelectParams) -> dict:
    """Parameters that differ from the table's defaults (besides pool and output)."""
    defaults = SelectParams()
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)
            if f.name not in ("metadata_dir", "out")
            and getattr(params, f.name) != getattr(defaults, f.name)}  # fmt: skip


def summary_table(records: list[dict]) -> str:
    """The summary as aligned text: bucket, rows, kept, seconds, status."""
    rows = [("bucket", "rows", "kept", "seconds", "status")]
    for r in records:
        status = r["status"] + (" (complete, skipped)" if r.get("skipped") else "")
        if r["error"]:
            status += f": {r['error']}"
        rows.append((r["name"], _n(r["rows"]), _n(r["kept"]), f"{r['seconds'] or 0:.1f}", status))
    width = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        f"{row[0]:<{width[0]}}  {row[1]:>{width[1]}}  {row[2]:>{width[2]}}  "
        f"{row[3]:>{width[3]}}  {row[4]}"
        for row in rows
    )


def _n(value) -> str:
    return "-" if value is None else f"{value:,}"

"""A report of a ``select`` output directory: ``report.html`` (self-contained: images are
embedded as base64 PNG) and the same figures as ``report/*.png``, made with matplotlib.

Figures: score of kept vs dropped rows, forward scores, kNN distances, kept fraction per
embedding cluster (IVF list), CLIP scores of kept vs dropped rows, stage timings. Everything
comes from the committed set (``run.json``, ``ranking.parquet``), the graph stage directory
named in ``run.json`` and the pool's CLIP columns; a source that is gone (``OUT/work``
deleted, pool moved) leaves a note in place of its figure. ``d2scale report OUT`` rebuilds
the report at any time; ``batch`` writes one per bucket and an index page.
"""

from __future__ import annotations

import base64
import html
import io as _bytes_io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from d2scale import io
from d2scale.errors import D2ScaleError
from d2scale.progress import plural
from d2scale.select.sinks import ALL

REPORT_HTML = "report.html"
REPORT_DIR = "report"
INDEX_HTML = "index.html"
HIST_SAMPLE = 2_000_000  # rows drawn (seeded) for histograms of larger pools
KEPT, DROPPED = "#1f77b4", "#bbbbbb"


@dataclass
class ReportData:
    """What the figures read: the run record, the ranking columns and optional sources."""

    out: str
    run: dict
    score: np.ndarray
    forward: np.ndarray | None
    kept: np.ndarray  # bool per row: selected at the largest fraction
    notes: dict[str, str] = field(default_factory=dict)
    graph_dir: str | None = None
    pool: object = None


def write_report(out: str, pool=None, progress: Callable[[str], None] | None = None) -> str:
    """Write ``OUT/report.html`` and ``OUT/report/*.png``; return the HTML path.

    ``pool`` (an opened pool) supplies the CLIP columns; by default the run's
    ``metadata_dir`` is opened, if it still holds the same content. ``progress`` hears each
    figure as it is drawn and a warning for each figure left out (the page says why too).
    """
    say = progress or (lambda message: None)
    data = load(out, pool)
    figures: dict[str, tuple[str, str | None]] = {}  # name → (caption, base64 PNG or None)
    io.makedirs(io.join(out, REPORT_DIR))
    for i, (name, (caption, draw)) in enumerate(FIGURES.items()):
        say(f"report: {i}/{len(FIGURES)} figures")
        fig = _figure(name, draw, data)
        if fig is None:
            say(f"report: warning: {caption} not drawn: {data.notes.get(name, 'no data')}")
        png = None if fig is None else _png(fig)
        if png is not None:
            with (
                io.atomic_path(io.join(out, REPORT_DIR, f"{name}.png")) as tmp,
                open(tmp, "wb") as f,
            ):
                f.write(png)
            png = base64.b64encode(png).decode("ascii")
        figures[name] = (caption, png)
    say(f"report: {len(FIGURES)}/{len(FIGURES)} figures")
    path = io.join(out, REPORT_HTML)
    with io.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(render(data, figures))
    return path


def load(out: str, pool=None) -> ReportData:
    """Read what the report needs from the output directory ``out``."""
    import pyarrow.parquet as pq

    run = read_run(out)
    fs, path = io.filesystem(io.join(out, "ranking.parquet"))
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except (OSError, ValueError) as e:
        raise D2ScaleError(f"cannot read {out}/ranking.parquet: {e}") from None
    missing = [c for c in ("rank", "score") if c not in table.column_names]
    if missing:
        raise D2ScaleError(f"{out}/ranking.parquet has no {missing[0]!r} column; rerun select.")
    rank = table.column("rank").to_numpy(zero_copy_only=False).astype(np.float64)
    budget = max(run["counts"]["selected"].values())  # rows written at the largest fraction
    data = ReportData(
        out=out,
        run=run,
        score=table.column("score").to_numpy(),
        forward=_column(table, "forward_score"),
        kept=np.nan_to_num(rank, nan=-1.0) >= 0,
    )
    data.kept &= np.nan_to_num(rank, nan=np.inf) < budget
    data.graph_dir = _graph_dir(data)
    data.pool = pool if pool is not None else _pool(data)
    return data


RUN_KEYS = ("input.metadata_dir", "input.fingerprint", "input.rows", "input.shards",
            "counts.selected")  # fmt: skip


def read_run(out: str) -> dict:
    """``OUT/run.json``, checked to hold what the report reads (one sentence otherwise)."""
    path = io.join(out, "run.json")
    if not io.exists(path):
        raise D2ScaleError(
            f"{out} has no run.json: it is not a finished `d2scale select` output directory"
        )
    try:
        run = io.read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise D2ScaleError(f"{path} is not valid JSON ({e}); rerun `d2scale select`.") from None
    for key in RUN_KEYS:
        value = run
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            raise D2ScaleError(f"{path} lacks {key}: not a run.json of `d2scale select`.")
    selected = run["counts"]["selected"]
    try:
        ok = isinstance(selected, dict) and selected and all(f == ALL or float(f) > 0
                                                             for f in selected)  # fmt: skip
    except ValueError:
        ok = False
    if not ok:
        raise D2ScaleError(f"{path}: counts.selected must map fractions (or {ALL!r}) to counts.")
    return run


def _column(table, name: str) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _graph_dir(data: ReportData) -> str | None:
    graph = data.run.get("stages", {}).get("graph")
    directory = (graph or {}).get("directory")
    if directory and io.exists(io.join(directory, "distances.npy")):
        return directory
    if graph is None:
        note = "this run built no kNN graph (its methods need none)"
    else:
        note = f"the graph directory {directory} is gone (OUT/work was deleted?)"
    data.notes["knn_distances"] = data.notes["clusters"] = note
    return None


def _pool(data: ReportData):
    """The run's pool if it can still be opened and holds the same content, else None."""
    from d2scale.pool.buckets import resolve_pool

    spec = data.run.get("params", {}).get("metadata_dir") or data.run["input"]["metadata_dir"]
    try:
        pool = resolve_pool(spec)
    except D2ScaleError as e:
        data.notes["clip"] = f"the pool cannot be read: {e}"
        return None
    if pool.fingerprint != data.run["input"]["fingerprint"]:
        data.notes["clip"] = f"the pool at {spec} has changed since the run"
        return None
    return pool


# ---------------------------------------------------------------- figures


def _figure(name: str, draw: Callable, data: ReportData):
    if name in data.notes:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), dpi=100, layout="constrained")
    note = draw(fig, data)
    if note:
        data.notes[name] = note
        return None
    return fig


def _png(fig) -> bytes:
    buf = _bytes_io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _sample(n: int) -> np.ndarray:
    """Rows for histograms: all of them, or a seeded sample of ``HIST_SAMPLE``."""
    if n <= HIST_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, HIST_SAMPLE, replace=False))


def _kept_vs_dropped(ax, values: np.ndarray, kept: np.ndarray, xlabel: str) -> None:
    rows = _sample(len(values))
    v, k = values[rows], kept[rows]
    finite = np.isfinite(v)
    bins = np.histogram_bin_edges(v[finite], bins=60)
    ax.hist(v[finite & ~k], bins=bins, color=DROPPED, label=f"dropped ({(~kept).sum():,})")
    ax.hist(v[finite & k], bins=bins, color=KEPT, alpha=0.8, label=f"kept ({kept.sum():,})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows" if len(values) <= HIST_SAMPLE else f"rows (of {HIST_SAMPLE:,} sampled)")
    ax.legend(frameon=False)


def draw_scores(fig, data: ReportData) -> str | None:
    ax = fig.add_subplot()
    _kept_vs_dropped(ax, data.score, data.kept, "score (D2 input: score column + shift)")
    ax.set_title("Score of kept vs dropped rows")
    return None


def draw_forward(fig, data: ReportData) -> str | None:
    if data.forward is None or not np.isfinite(data.forward).any():
        return "ranking.parquet has no forward scores (the last method is not d2)"
    ax = fig.add_subplot()
    _kept_vs_dropped(ax, data.forward, data.kept, "forward score g (after forward message passing)")
    ax.set_title("Forward scores")
    return None


def draw_distances(fig, data: ReportData) -> str | None:
    dist = io.load_npy(io.join(data.graph_dir, "distances.npy"), mmap=True)
    rows = _sample(dist.shape[0])
    d = np.asarray(dist[rows])
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(d[np.isfinite(d)], bins=60)
    ax.hist(d[np.isfinite(d)], bins=bins, color=DROPPED, label=f"all {d.shape[1]} neighbours")
    first = d[:, 0][np.isfinite(d[:, 0])]
    ax.hist(first, bins=bins, color=KEPT, alpha=0.8, label="nearest neighbour")
    ax.set_xlabel("Euclidean distance to a kNN neighbour (unit embeddings)")
    ax.set_ylabel("edges")
    ax.set_title(f"kNN distances (k={d.shape[1]})")
    ax.legend(frameon=False)
    return None


def draw_clusters(fig, data: ReportData) -> str | None:
    path = io.join(data.graph_dir, "lists.npy")
    if not io.exists(path):
        return "the graph was built by exact search: it has no IVF lists (embedding clusters)"
    lists = io.load_npy(path).astype(np.int64)
    if lists.shape[0] != data.kept.shape[0]:
        return "the graph covers the survivors of an earlier chain step, not the whole pool"
    size = np.bincount(lists)
    kept = np.bincount(lists[data.kept], minlength=size.size)
    used = size > 0
    share = kept[used] / size[used]
    ax = fig.add_subplot()
    ax.scatter(size[used], share, s=8, color=KEPT, alpha=0.6)
    ax.axhline(data.kept.mean(), color="black", lw=1, ls="--", label="overall kept fraction")
    ax.set_xscale("log")
    ax.set_xlabel("rows in the IVF list (embedding cluster)")
    ax.set_ylabel("kept fraction")
    ax.set_title(f"Kept fraction per embedding cluster ({used.sum():,} IVF lists)")
    ax.legend(frameon=False)
    return None


def draw_clip(fig, data: ReportData) -> str | None:
    from d2scale.pool.sources import read_columns

    pool = data.pool
    names = _clip_columns(pool)
    if not names:
        return "the pool has no clip_*_similarity_score column"
    for i, name in enumerate(names):
        values = np.concatenate([
            read_columns(pool, s, [name]).column(name).to_numpy(zero_copy_only=False)
            for s in pool.shards
        ]).astype(np.float64)  # fmt: skip
        ax = fig.add_subplot(1, len(names), i + 1)
        _kept_vs_dropped(ax, values, data.kept, name)
    fig.suptitle("CLIP score of kept vs dropped rows")
    return None


def _clip_columns(pool) -> list[str]:
    import pyarrow.parquet as pq

    with pool.fs.open(pool.shards[0].parquet, "rb") as f:
        schema = pq.ParquetFile(f).schema_arrow.names
    return [c for c in ("clip_l14_similarity_score", "clip_b32_similarity_score") if c in schema]


def draw_timings(fig, data: ReportData) -> str | None:
    timings = {k: v for k, v in data.run.get("timings_s", {}).items() if k != "total"}
    stages = data.run.get("stages", {})
    graph = (data.run.get("graph") or {}).get("timings", {})
    labels = [f"{k} (reused)" if stages.get(k, {}).get("reused") else k for k in timings]
    built = " (when built)" if stages.get("graph", {}).get("reused") else ""
    labels += [f"graph: {k}{built}" for k in graph]
    values = [*timings.values(), *graph.values()]
    ax = fig.add_subplot()
    colors = [KEPT] * len(timings) + [DROPPED] * len(graph)
    bars = ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    ax.bar_label(bars, fmt="%.2f s", padding=2, fontsize=8)
    ax.set_xlabel("seconds")
    total = data.run.get("timings_s", {}).get("total")
    ax.set_title("Stage timings" + (f" (run total {total:.1f} s)" if total else ""))
    return None


FIGURES: dict[str, tuple[str, Callable]] = {
    "scores": ("Score of kept vs dropped rows", draw_scores),
    "forward": ("Forward-score histogram", draw_forward),
    "knn_distances": ("kNN distance histogram", draw_distances),
    "clusters": ("Kept fraction per embedding cluster (IVF list)", draw_clusters),
    "clip": ("CLIP score of kept vs dropped rows", draw_clip),
    "timings": ("Stage timings", draw_timings),
}


# ---------------------------------------------------------------- HTML

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
    "text-align:left}figure{margin:1.5em 0}img{max-width:100%}.note{color:#a00}"
)


def render(data: ReportData, figures: dict[str, tuple[str, str | None]]) -> str:
    """The report page: facts of the run, then each figure (or the note why it is missing)."""
    run = data.run
    parts = [f"<h1>d2scale report: {_e(data.out)}</h1>", _table(facts(run)), _steps(run)]
    for name, (caption, png) in figures.items():
        if png is None:
            body = f"<p class='note'>Not drawn: {_e(data.notes.get(name, 'no data'))}</p>"
        else:
            body = f"<img alt='{_e(caption)}' src='data:image/png;base64,{png}'>"
        parts.append(f"<figure><figcaption><b>{_e(caption)}</b></figcaption>{body}</figure>")
    return _page(f"d2scale report: {data.out}", "\n".join(parts))


def facts(run: dict) -> list[tuple[str, str]]:
    """The key facts of a ``run.json`` as (label, text) rows."""
    params, counts = run.get("params", {}), run.get("counts", {})
    graph, cluster = run.get("graph") or {}, run.get("cluster") or {}
    selected = ", ".join(f"{f}: {c:,}" for f, c in counts.get("selected", {}).items())
    peak = cluster.get("peak_rss_bytes_driver")
    steps = run.get("steps") or []
    rows = [
        ("pool", f"{run['input']['metadata_dir']} ({plural(run['input']['rows'], 'row')}, "
                 f"{plural(len(run['input']['shards']), 'shard')})"),
        ("kept (fraction: rows)", selected),
        ("method" if len(steps) < 2 else "chain", method_text(run)
         + (f" γr={params.get('gamma')} γf={params.get('gamma_forward')}"
            if "d2" in [s.get("method") for s in steps] or not steps else "")
         + f" k={params.get('n_neighbors')} "
           f"{params.get('embedding_model')}/{params.get('feature_type')}"),
        ("kNN graph", f"{graph.get('index')} search, recall@k {graph.get('recall')}"
                      + (f", nlist {graph['nlist']}, nprobe {graph['nprobe']}"
                         if graph.get("nlist") else "")),
        ("stages", ", ".join(f"{k}: {v:.2f} s" for k, v in run.get("timings_s", {}).items())),
        ("peak memory", f"{peak / 2**30:.2f} GiB (driver)" if peak else "not recorded"),
        ("cluster", f"{cluster.get('workers')} worker(s), {cluster.get('threads')} threads, "
                    f"dashboard {cluster.get('dashboard')}" if cluster else "not recorded"),
        ("d2scale", run.get("d2scale_version", "?")),
    ]  # fmt: skip
    return rows


def method_text(run: dict) -> str:
    """The method, or a chain's steps with the rows each kept: ``basic 20,000 → 13,335 →
    clip-score:0.5 10,000 → d2:0.3 6,000``."""
    steps = run.get("steps") or []
    if len(steps) < 2:
        return str((run.get("method") or {}).get("name") or (steps[0]["method"] if steps else "?"))
    text = [f"{_num(steps[0].get('rows_in'))} rows"]
    for step in steps:
        fraction = step.get("fraction")
        name = step.get("method") if fraction is None else f"{step.get('method')}:{fraction:g}"
        text.append(f"{name} {_num(step.get('kept'))}")
    return " → ".join(text)


STEP_FACTS = ("method", "fraction", "options", "rows_in", "kept")


def _steps(run: dict) -> str:
    """A table of a chain's steps (nothing for a single method)."""
    steps = run.get("steps") or []
    if len(steps) < 2:
        return ""
    head = "<tr><th>step</th><th>method</th><th>fraction of the pool</th><th>options</th>" \
           "<th>rows in</th><th>kept</th><th>facts</th></tr>"  # fmt: skip
    rows = []
    for i, s in enumerate(steps, 1):
        options = ", ".join(f"{k}={v}" for k, v in (s.get("options") or {}).items())
        more = ", ".join(f"{k}={v}" for k, v in s.items() if k not in STEP_FACTS)
        fraction = "-" if s.get("fraction") is None else f"{s['fraction']:g}"
        rows.append(f"<tr><td>{i}</td><td>{_e(s.get('method'))}</td><td>{fraction}</td>"
                    f"<td>{_e(options or '-')}</td><td>{_num(s.get('rows_in'))}</td>"
                    f"<td>{_num(s.get('kept'))}</td><td>{_e(more)}</td></tr>")  # fmt: skip
    return f"<h2>Steps</h2><table>{head}{''.join(rows)}</table>"


def write_index(out: str, records: list[dict], seconds: float | None = None) -> str:
    """``OUT/index.html``: the batch summary with a link to each bucket's report."""
    head = "<tr><th>bucket</th><th>status</th><th>rows</th><th>kept</th><th>seconds</th>" \
           "<th>error</th></tr>"  # fmt: skip
    rows = []
    for r in records:
        report = r.get("report")
        target = r.get("global") or r["name"]
        name = _e(r["name"])
        if report:
            name = f"<a href='{_e(target)}/{REPORT_HTML}'>{name}</a>"
        rows.append(
            f"<tr><td>{name}</td><td>{_e(r['status'])}</td><td>{_num(r['rows'])}</td>"
            f"<td>{_num(r['kept'])}</td><td>{r['seconds'] or 0:.1f}</td>"
            f"<td>{_e(r['error'] or '')}</td></tr>"
        )
    total = ""
    if seconds is not None:
        total = f"<p>{plural(len(records), 'bucket')} in {seconds:.1f} s.</p>"
    body = f"<h1>d2scale batch: {_e(out)}</h1>{total}<table>{head}{''.join(rows)}</table>"
    path = io.join(out, INDEX_HTML)
    with io.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(_page(f"d2scale batch: {out}", body))
    return path


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _num(value) -> str:
    return "-" if value is None else f"{value:,}"

"""The markdown tables of the benchmark suite (``python -m benchmarks``) from its JSON."""

from __future__ import annotations


def render(report: dict) -> str:
    """``bench.md``: machine and versions, then one table per section that ran."""
    parts = [header(report)]
    for name, section in report["sections"].items():
        if "error" in section:
            parts.append(f"## {name}\n\nfailed: `{section['error'][-300:]}`\n")
            continue
        parts.append(RENDERERS[name](section))
    return "\n".join(parts)


def header(report: dict) -> str:
    host, versions = report["host"], report["versions"]
    load = report.get("load_start", {})
    busy = "; ".join(f"{b['command'][:60]} ({b['cpu_percent']:.0f}% CPU)"
                     for b in load.get("busiest", [])) or "nothing above 5% CPU"  # fmt: skip
    end = report.get("load_end", {}).get("load_average_1m")
    return (
        "# d2scale benchmark suite\n\n"
        f"- machine: {host['cpu']}, {host['cores']} cores, {host.get('memory_gib')} GiB; "
        f"{host['platform']}, Python {host['python']}\n"
        f"- git revision: `{host['git_revision']}`, run {report['started']}\n"
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}\n"
        f"- load average (1 min): {load.get('load_average_1m')} at the start, {end} at the end; "
        f"busiest other processes at the start: {busy}\n"
    )


def table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def io_section(section: dict) -> str:
    rows = []
    for r in section["results"]:
        if "error" in r:
            rows.append([r["rows"], "failed", None, None, None, None])
            continue
        m, e = r["metadata"], r["embeddings"]
        rows.append([r["rows"], r["shards"], m["rows_per_s"], e["rows_per_s"],
                     e["npz_gb_per_s"], e["decoded_gb_per_s"]])  # fmt: skip
    head = ["rows", "shards", "read stage rows/s", "embeddings rows/s", "npz GB/s (on disk)",
            "float32 GB/s (decoded)"]  # fmt: skip
    return f"## I/O ({section['note']})\n\n" + table(head, rows)


def knn_section(section: dict) -> str:
    rows = []
    for r in section.get("results", []):
        d2, exact = r.get("d2scale", {}), r.get("exact_flat", {})
        ivf, bbs = _fastest(r.get("ivf_flat")), _fastest(r.get("big_batch_search"))
        rows.append([r.get("n"), _timed(d2), f"{exact.get('wall_s')} s", _timed(ivf),
                     _timed(bbs), d2.get("peak_rss_gib")])  # fmt: skip
    params = section.get("params", {})
    head = ["rows", "d2scale", "exact flat (extrapolated)", "faiss IVF-Flat",
            "faiss big_batch_search", "d2scale peak RSS GiB"]  # fmt: skip
    title = (f"## kNN graph (k={params.get('k')}, recall target {params.get('recall_target')}, "
             f"data {params.get('data', 'synth')})")  # fmt: skip
    return f"{title}\n\n" + table(head, rows)


def _fastest(entry) -> dict | None:
    """A baseline's result; of several (e.g. one per nlist), the fastest."""
    if isinstance(entry, list):
        timed = [e for e in entry if isinstance(e, dict) and "wall_s" in e]
        return min(timed, key=lambda e: e["wall_s"]) if timed else None
    return entry if isinstance(entry, dict) and "wall_s" in entry else None


def _timed(entry: dict | None) -> str | None:
    if entry is None:
        return None
    extra = f", nlist {entry['nlist']}" if entry.get("nlist") else ""
    return f"{entry['wall_s']} s (recall {entry.get('recall')}{extra})"


def mp_section(section: dict) -> str:
    b = section["baseline"]
    rows = [[int(n), s["mp"]["wall_s"][len(s["mp"]["wall_s"]) // 2],
             s["mp"]["median_us_per_node"], s["mp"]["peak_rss_mb"]]
            for n, s in section["sizes"].items()]  # fmt: skip
    base = (
        f"Baselines at {b['n']:,} nodes (µs per node): d2scale reverse pass "
        f"{b['d2scale_reverse_us_per_node']}, plain-Python heapq greedy "
        f"{b['heapq_us_per_node']} (same order: {b['heapq_order_equals_d2scale']}), dense "
        f"reference sampler {b['dense_reference_us_per_node']}.\n"
    )
    head = ["rows", "`d2scale mp` wall s (median of 3)", "µs per node", "peak RSS MB"]
    return "## Message passing (k=10 graphs, γ=1)\n\n" + table(head, rows) + "\n" + base


def select_section(section: dict) -> str:
    rows, kills = [], []
    for r in section["results"]:
        if "error" in r:
            rows.append([r["rows"], "failed", None, None, None, None, None])
            continue
        t = r["timings_s"]
        rows.append([r["rows"], r["wall_s"], t.get("read"), t.get("graph"), t.get("forward"),
                     t.get("reverse"), r.get("peak_rss_gib_max_so_far")])  # fmt: skip
        for k in r.get("killed", []):
            kills.append([r["rows"], k["point"], r["wall_s"], k.get("rerun_wall_s"),
                          k.get("identical_uids"), ", ".join(
                              s for s, used in k.get("reused", {}).items() if used)])  # fmt: skip
    head = ["rows", "wall s", "read s", "graph s", "forward s", "reverse s", "peak RSS GiB"]
    kill_head = ["rows", "SIGKILL at", "clean run s", "rerun s", "identical uids",
                 "stages reused"]  # fmt: skip
    return ("## End-to-end select (fraction 0.3)\n\n" + table(head, rows)
            + "\nKilled with SIGKILL, then rerun into the same directory:\n\n"
            + table(kill_head, kills))  # fmt: skip


def small_section(section: dict) -> str:
    startup = section.get("startup", {})
    steps = [[k, v["wall_s"], v["cpu_s"]] for k, v in startup.get("steps", {}).items()]
    runs = []
    for index in ("auto", "exact"):
        r = section.get(index, {})
        if "wall_s" in r:
            t = r["timings_s"]
            runs.append([index, r["graph_index"], r["wall_s"], t.get("total"), t.get("read"),
                         t.get("graph"), t.get("forward"), t.get("reverse")])  # fmt: skip
    head = ["--index", "used", "process wall s", "run.json total s", "read", "graph",
            "forward", "reverse"]  # fmt: skip
    return (f"## Where a {section['rows']:,}-row select spends its time\n\n"
            + table(head, runs) + "\nFixed costs in a fresh process:\n\n"
            + table(["step", "wall s", "CPU s"], steps))  # fmt: skip


RENDERERS = {"io": io_section, "knn": knn_section, "mp": mp_section, "select": select_section,
             "small": small_section}  # fmt: skip

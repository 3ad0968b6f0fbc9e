"""Experiment grids over methods × fractions × seeds.

The coreset grid (:func:`run_experiment`, D2 protocol): one full-data run per seed, then
select + train every (method, fraction) cell. The DRoP grid (:func:`run_drop_experiment`):
one full-data reference model per seed, then a ``dp`` prune run per (scorer+quoter, CDB-W,
fraction). Layout of ``out``::

    seed-<s>/full/                 full-data run (D2 grid: dynamics.npz, features.npy)
    seed-<s>/<method>-<fraction>/  a cell: coreset.npy + selection.json, or a prune run
    grid.json                      what every cell depends on besides its method, fraction, seed
    query-cache/                   DRoP grid: query models shared by the cells
    results.json  results.md  accuracy.png

A cell whose ``metrics.json`` exists is skipped, so a rerun resumes the grid; a rerun with
other data, model, training recipe or selection settings is refused (``grid.json``).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.io import atomic_path, save_json, save_npy
from d2scale.vision import runs
from d2scale.vision.coresets import CoresetParams, select_coreset
from d2scale.vision.dynamics import score_name
from d2scale.vision.params import QUOTERS, VISION
from d2scale.vision.prune import SCORERS, PruneParams, run_prune
from d2scale.vision.registry import METHODS
from d2scale.vision.train import TRAINING_VERSION, train

GRID_FILE = "grid.json"


@dataclass(frozen=True)
class MethodSpec:
    """A grid method: ``name`` (one of ``METHODS``) and, for ``topk-<score>``, its score."""

    name: str
    score: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}-{self.score}" if self.score else self.name


def parse_methods(text: str) -> list[MethodSpec]:
    """``random,topk-forgetting,d2,…`` → method specs (``<method>-<score>`` sets the score)."""
    specs = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, score = item.partition("-")
        if name not in METHODS:
            raise D2ScaleError(f"unknown method {item!r}; methods: {', '.join(METHODS)}.")
        specs.append(MethodSpec(name, score_name(score) if score else None))
    if not specs:
        raise D2ScaleError("--methods lists no method.")
    return specs


def check_axes(fractions: list[float], **axes: list) -> None:
    """Refuse, before any training, a fraction out of range and a grid that would run a cell
    twice: an item of ``--fractions`` or of ``axes`` (flag name → items) given twice, or two
    fractions that name one cell directory (``0.3`` and ``0.3000001`` are both ``-0.3``)."""
    param = VISION["fraction"]
    bad = next((f for f in fractions if not param._in_range(f)), None)
    if bad is not None:
        raise D2ScaleError(f"--fractions must be {param.range_text()}; got {bad:g}.")
    for flag, items in {"fractions": [f"{f:g}" for f in fractions], **axes}.items():
        twice = next((x for i, x in enumerate(items) if x in items[:i]), None)
        if twice is not None:
            why = " (a cell directory names a fraction to 6 digits)" * (flag == "fractions")
            raise D2ScaleError(f"--{flag.replace('_', '-')} names {twice} twice{why}; "
                               "give each once.")  # fmt: skip


def check_grid(out: str, identity: dict) -> None:
    """Record in ``out/grid.json`` what every cell depends on besides its method, fraction and
    seed, or refuse ``out`` when it holds a grid made with other values: its finished cells
    would be read as they are and mixed with new ones. A grid without the file (made before
    it was written) gets it."""
    identity = json.loads(json.dumps(identity, default=str))  # as it reads back
    path = os.path.join(out, GRID_FILE)
    if not os.path.isfile(path):
        save_json(path, identity)
        return
    try:
        with open(path) as f:
            recorded = json.load(f)
    except (OSError, ValueError) as e:
        raise D2ScaleError(f"cannot read {path}: {e}; use another --out.") from None
    for key in sorted(set(identity) | set(recorded)):
        if recorded.get(key) != identity.get(key):
            raise D2ScaleError(
                f"{out} holds a grid made with {key} {recorded.get(key)!r}, not "
                f"{identity.get(key)!r} (its finished cells would be reused); use another --out."
            )


def _identity(protocol: str, data, model: str, recipe, select_params: dict, **extra) -> dict:
    """The values every cell of a grid depends on (:func:`check_grid`)."""
    return {"protocol": protocol, "training_version": TRAINING_VERSION, "dataset": data.name,
            "n_train": data.size("train"), "model": model, **asdict(recipe), **select_params,
            **extra}  # fmt: skip


def run_experiment(
    data,
    model: str,
    recipe,
    *,
    methods: list[MethodSpec],
    fractions: list[float],
    seeds: list[int],
    out: str,
    select_params: dict,
    progress: Callable[[str], None] = print,
    bars: bool = False,
    ignored_flags: list[str] | None = None,
) -> list[dict]:
    """Run the grid (resuming finished cells) and write the results files; the records."""
    check_axes(fractions, methods=[spec.label for spec in methods], seeds=seeds)
    for spec, fraction in itertools.product(methods, fractions):  # e.g. --mis-ratio, now
        _cell_params(spec, fraction, seeds[0], select_params)
    check_grid(out, _identity("d2", data, model, recipe, select_params))
    bars = progress if bars else None  # training reports batches through ``progress``
    records = []
    for seed in seeds:
        full_dir = os.path.join(out, f"seed-{seed}", "full")
        if not runs.is_finished(full_dir):
            progress(f"seed {seed}: full-data run")
            result = train(
                data,
                model,
                replace(recipe, iterations=None),
                seed=seed,
                dynamics=True,
                out=full_dir,
                progress=bars,
                desc="full",
            )
            runs.save_run(full_dir, result)
        records.append(_record("full", 1.0, seed, runs.read_metrics(full_dir)))
        scores, features = runs.load_run(full_dir)
        for spec in methods:
            for fraction in fractions:
                cell = os.path.join(out, f"seed-{seed}", f"{spec.label}-{fraction:g}")
                if not runs.is_finished(cell):
                    progress(f"seed {seed}: {spec.label} at {fraction:g}")
                    _run_cell(
                        data,
                        model,
                        recipe,
                        spec,
                        fraction,
                        seed,
                        cell,
                        scores,
                        features,
                        select_params,
                        bars,
                    )
                records.append(_record(spec.label, fraction, seed, runs.read_metrics(cell)))
                _say_warnings(records[-1], progress)
    write_results(out, records, ignored_flags)
    return records


def _cell_params(spec: MethodSpec, fraction: float, seed: int, sp: dict) -> CoresetParams:
    """The checked selection parameters of one cell."""
    params = CoresetParams(method=spec.name, fraction=fraction, seed=seed, **sp)
    if spec.score:
        params.score = spec.score
    return params.validate()


def _run_cell(data, model, recipe, spec, fraction, seed, cell, scores, features, sp, bars):
    t0 = time.perf_counter()
    params = _cell_params(spec, fraction, seed, sp)
    coreset = select_coreset(params, scores, features)
    save_npy(os.path.join(cell, "coreset.npy"), coreset.indices)
    warnings = coreset.info.get("warnings", [])
    save_json(os.path.join(cell, "selection.json"), coreset.info)
    result = train(
        data,
        model,
        recipe,
        indices=coreset.indices,
        seed=seed,
        out=cell,
        progress=bars,
        desc=f"{spec.label} {fraction:g}",
    )
    extra = {
        "method": spec.label,
        "fraction": fraction,
        "n_selected": len(coreset.indices),
        "select_seconds": coreset.info["seconds"],
        "cell_seconds": round(time.perf_counter() - t0, 2),
        **({"warnings": warnings} if warnings else {}),
    }
    runs.save_run(cell, result, extra)


def _record(method: str, fraction: float, seed: int, m: dict) -> dict:
    return {
        "method": method,
        "fraction": fraction,
        "seed": seed,
        "test_accuracy": m["test_accuracy"],
        "worst_class_accuracy": m["worst_class_accuracy"],
        "per_class_accuracy": m["per_class_accuracy"],
        "n_selected": m["n_train"],
        "seconds": m["cell_seconds"] if "cell_seconds" in m else m["seconds"],
        "warnings": m.get("warnings", []),
        **(
            {"worst_group_accuracy": m["worst_group_accuracy"]}
            if "worst_group_accuracy" in m
            else {}
        ),
    }


def _say_warnings(record: dict, progress: Callable[[str], None]) -> None:
    """A degraded cell's warnings (a class emptied), one line each, naming the cell."""
    for w in record["warnings"]:
        progress(f"seed {record['seed']}: {record['method']} at {record['fraction']:g}: {w}")


# ============================================================================ DRoP grid


def parse_drop_methods(text: str) -> list[tuple[str, str]]:
    """``random,random+drop,el2n+uniform,…`` → (scorer, quoter) pairs (default quoter none)."""
    pairs = []
    for item in (t.strip().lower() for t in text.split(",") if t.strip()):
        scorer, _, quoter = item.partition("+")
        if scorer not in SCORERS or quoter not in ("", *QUOTERS):
            quoters = "|".join("+" + q for q in QUOTERS)
            raise D2ScaleError(
                f"unknown DRoP method {item!r}: use <scorer>[{quoters}] with a "
                f"scorer among {', '.join(SCORERS)}."
            )
        pairs.append((scorer, quoter or "none"))
    if not pairs:
        raise D2ScaleError("--methods lists no method.")
    return pairs


def run_drop_experiment(
    data,
    model: str,
    recipe,
    *,
    methods: list[tuple[str, str]],
    fractions: list[float],
    seeds: list[int],
    cdbw: list[bool],
    num_inits: int,
    smoothings: tuple[str, ...] = ("none",),
    out: str,
    select_params: dict,
    progress: Callable[[str], None] = print,
    bars: bool = False,
    ignored_flags: list[str] | None = None,
) -> list[dict]:
    """DRoP pruning grid: per seed a full-data reference model, then ``vision prune
    --strategy dp`` for every (scorer+quoter, CDB-W, recall smoothing, fraction) — smoothing
    only where recalls are used (DRoP quotas, CDB-W); query models are shared through
    ``out/query-cache``. Writes the same results files as :func:`run_experiment`."""
    labels = [s + f"+{q}" * (q != "none") for s, q in methods]
    cdbw_items = ["on" if w else "off" for w in cdbw]
    check_axes(fractions, methods=labels, seeds=seeds, cdbw=cdbw_items,
               recall_smoothing=list(smoothings))  # fmt: skip
    for (scorer, quoter), fraction in itertools.product(methods, fractions):  # now, not later
        PruneParams("dp", fraction, scorer=scorer, quoter=quoter, num_inits=num_inits,
                    seed=seeds[0], select=select_params).validate()  # fmt: skip
    check_grid(out, _identity("drop", data, model, recipe, select_params, num_inits=num_inits))
    bars = progress if bars else None  # training reports batches through ``progress``
    records = []
    cache = os.path.join(out, "query-cache")
    for seed in seeds:
        full_dir = os.path.join(out, f"seed-{seed}", "full")
        if not runs.is_finished(full_dir):
            progress(f"seed {seed}: full-data reference model")
            runs.save_run(full_dir, train(data, model, recipe, seed=seed, out=full_dir,
                                          progress=bars, desc="full"))  # fmt: skip
        records.append(_record("full", 1.0, seed, runs.read_metrics(full_dir)))
        cells = itertools.product(methods, cdbw, smoothings, fractions)
        for (scorer, quoter), weighted, smoothing, fraction in cells:
            if smoothing != "none" and not (weighted or quoter == "drop"):
                continue  # smoothing changes nothing here: the cell without it covers it
            label = (scorer + ("" if quoter == "none" else f"+{quoter}") + ("+cdbw" * weighted)
                     + ("" if smoothing == "none" else f"+{smoothing}"))  # fmt: skip
            cell = os.path.join(out, f"seed-{seed}", f"{label}-{fraction:g}")
            finished = runs.is_finished(cell)
            if not finished:
                progress(f"seed {seed}: {label} at {fraction:g}")
                params = PruneParams("dp", fraction, scorer=scorer, quoter=quoter,
                                     num_inits=num_inits, cdbw_final=weighted,
                                     recall_smoothing=smoothing, seed=seed,
                                     select=select_params)  # fmt: skip
                run_prune(data, model, recipe, params, cell, progress=progress,
                          bars=bars is not None, query_cache=cache)  # fmt: skip
            m = runs.read_metrics(cell)
            m |= {"n_train": m["n_kept"], "cell_seconds": m["timings"]["total"]}
            records.append(_record(label, fraction, seed, m))
            if finished:  # a cell run now said its warnings as they came
                _say_warnings(records[-1], progress)
    write_results(out, records, ignored_flags)
    return records


# ============================================================================ results files


def write_results(out: str, records: list[dict], ignored_flags: list[str] | None = None) -> None:
    """``results.json`` (every record; ``ignored_flags``: the warnings of flags no method of
    the grid reads), ``results.md`` (mean ± std over seeds), the plot."""
    ignored = {"ignored_flags": ignored_flags} if ignored_flags else {}
    save_json(os.path.join(out, "results.json"), {"records": records, **ignored})
    with atomic_path(os.path.join(out, "results.md")) as tmp, open(tmp, "w") as f:
        f.write(results_markdown(records))
    plot_results(records, os.path.join(out, "accuracy.png"))


def _grid(records: list[dict], key: str) -> tuple[list[str], list[float], dict]:
    methods = list(dict.fromkeys(r["method"] for r in records if r["method"] != "full"))
    fractions = sorted({r["fraction"] for r in records if r["method"] != "full"})
    cells: dict[tuple[str, float], list[float]] = {}
    for r in records:
        cells.setdefault((r["method"], r["fraction"]), []).append(100 * r[key])
    return methods, fractions, cells


def _fmt(values: list[float] | None) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def results_markdown(records: list[dict]) -> str:
    """Two tables (test and worst-class accuracy, %), methods × fractions kept."""
    seeds = sorted({r["seed"] for r in records})
    lines = [f"Mean ± std over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}), in %.", ""]
    tables = [
        ("test_accuracy", "Test accuracy"),
        ("worst_class_accuracy", "Worst-class test accuracy"),
    ]
    if all("worst_group_accuracy" in r for r in records):  # Waterbirds
        tables.append(("worst_group_accuracy", "Worst-group test accuracy"))
    for key, title in tables:
        methods, fractions, cells = _grid(records, key)
        lines += [f"**{title}** (full data: {_fmt(cells.get(('full', 1.0)))})", ""]
        lines.append("| method | " + " | ".join(f"{f:g} kept" for f in fractions) + " |")
        lines.append("|---|" + "---|" * len(fractions))
        for m in methods:
            row = " | ".join(_fmt(cells.get((m, f))) for f in fractions)
            lines.append(f"| {m} | {row} |")
        lines.append("")
    warned = [r for r in records if r.get("warnings")]
    if warned:
        lines += ["**Warnings** (degraded cells; details in results.json)", ""]
        lines += [f"- seed {r['seed']}, {r['method']} at {r['fraction']:g}: {w}"
                  for r in warned for w in r["warnings"]]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def plot_results(records: list[dict], path: str) -> None:
    """Average and worst-class test accuracy against the fraction kept: two panels, one line
    per method (mean ± std over seeds), the legend beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("test_accuracy", "test accuracy (%)"), ("worst_class_accuracy", "worst class (%)"))
    methods = _grid(records, panels[0][0])[0]
    colors = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for ax, (key, ylabel) in zip(axes, panels, strict=True):
        _, fractions, cells = _grid(records, key)
        for i, m in enumerate(methods):
            fs = [f for f in fractions if (m, f) in cells]
            mean = np.array([np.mean(cells[(m, f)]) for f in fs])
            std = np.array([np.std(cells[(m, f)]) for f in fs])
            style = {"color": colors(i % colors.N), "ls": ("-", "--", ":")[i // colors.N % 3]}
            ax.errorbar(fs, mean, yerr=std, marker="o", capsize=3, label=m, **style)
        if ("full", 1.0) in cells:
            ax.axhline(np.mean(cells[("full", 1.0)]), color="gray", ls="--", label="full data")
        ax.set_xlabel("fraction of training data kept")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)

"""A selection chain: each step's method ranks the survivors of the step before (``select
--method basic --then clip-score:0.5 --then d2:0.3``). Fractions are of the whole pool.

How much the run keeps (:func:`keep_rule`): the last step's own fraction, else
``--fraction``, else — when the last step is a filter — every row it passes, else
:data:`~d2scale.params.RANKING_FRACTION`. A filter asked for more rows than it passes keeps
those it passes (a warning, recorded); a ranking step asked for more rows than it is given
is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.methods import MethodInputs, check_step, flags_read, get_method
from d2scale.methods.base import GRAPH_FLAGS, MESSAGE_PASSING_FLAGS
from d2scale.methods.registry import is_filter
from d2scale.params import PARAMS, RANKING_FRACTION, SelectParams, Step, budget_for, parse_step
from d2scale.stages import stage_key
from d2scale.types import Ranking


def chain_steps(params: SelectParams) -> list[Step]:
    """``--method`` then every ``--then``, each checked by its method (name and options);
    the first step keeps no fraction of its own."""
    first = parse_step(params.method)
    if first.fraction is not None:
        raise D2ScaleError(
            f"--method {params.method!r} takes no fraction: use --fraction (or --then steps)."
        )
    steps = [first, *(parse_step(t) for t in params.then)]
    for step in steps:
        check_step(step, params)
    return steps


BUILD_FLAGS = ("index", "recall", "graph_engine")  # how a graph is built: not read with --graph


def unread_flags(steps: list[Step], params: SelectParams) -> list[str]:
    """One warning per graph or message-passing flag set away from its default that no step
    reads, so that it changes nothing (no step uses the graph, every d2 step sets its own
    value, the given ``--graph`` is used as built, an exact index has no recall target)."""
    read = set().union(*(flags_read(step) for step in steps))
    own = set().union(*(step.options for step in steps))
    if params.graph is not None:
        read -= set(BUILD_FLAGS)
    elif params.index == "exact":
        read.discard("recall")
    return [
        f"{PARAMS[name].flag} {getattr(params, name)} changes nothing: "
        f"{_unread_why(name, params, own)}"
        for name in (*GRAPH_FLAGS, *MESSAGE_PASSING_FLAGS)
        if name not in read and getattr(params, name) != PARAMS[name].default
    ]


def _unread_why(name: str, params: SelectParams, own: set[str]) -> str:
    if name in own:
        return f"every step that reads it sets its own {name}"
    if params.graph is not None and name in BUILD_FLAGS:
        return "the --graph given is used as it was built"
    if name == "recall" and params.index == "exact":
        return "an exact index has no recall target"
    return "no step of --method/--then reads it"


@dataclass(frozen=True)
class KeepRule:
    """What the run writes: ``fractions`` of the pool (``None``: every row the last step,
    a filter, passes) and which rule chose them (``rule``, for ``run.json``)."""

    fractions: list[float] | None
    rule: str
    last_is_filter: bool


def keep_rule(params: SelectParams, steps: list[Step]) -> KeepRule:
    """How much the run keeps; ``--fraction`` beside the last step's own fraction is refused
    (one of them would be ignored), and so is a ranking step asked for more of the pool than
    an earlier step keeps (checked here, before any step runs)."""
    rule = _keep_rule(params, steps)
    for i, step in enumerate(steps):
        last = i == len(steps) - 1 and rule.fractions
        _check_shrinks(i, step, max(rule.fractions) if last else step.fraction, steps[:i])
    return rule


def _check_shrinks(i: int, step: Step, asked: float | None, earlier: list[Step]) -> None:
    """Refuse ranking step ``i`` asked for more of the pool than an ``earlier`` step keeps
    (a filter keeps all it passes, with a warning)."""
    kept = [s.fraction for s in earlier if s.fraction is not None]
    if asked is None or not kept or asked <= min(kept) or is_filter(step.method, step.options):
        return
    raise D2ScaleError(
        f"step {i + 1} ({step.method}) is asked for {asked:g} of the pool, more than the "
        f"{min(kept):g} an earlier step keeps; lower its fraction."
    )


def _keep_rule(params: SelectParams, steps: list[Step]) -> KeepRule:
    last = steps[-1]
    filtering = is_filter(last.method, last.options)
    if last.fraction is not None:
        if params.fraction is not None:
            given = ",".join(f"{f:g}" for f in params.fraction)
            raise D2ScaleError(
                f"--fraction {given} and the last step's own fraction ({last.fraction:g}) both "
                "say how much to keep; give one of them."
            )
        return KeepRule([last.fraction], "the last step's fraction", filtering)
    if params.fraction is not None:
        return KeepRule(list(params.fraction), "--fraction", filtering)
    if filtering:
        return KeepRule(None, "every row the filter passes (no fraction given)", True)
    return KeepRule([RANKING_FRACTION], f"default fraction {RANKING_FRACTION:g}", False)


@dataclass
class ChainResult:
    """The final ranking over pool rows and one record per step (for ``run.json``)."""

    ranking: Ranking
    steps: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def run_chain(steps: list[Step], n: int, budget: int | None, make_inputs, params) -> ChainResult:
    """Run ``steps`` over rows ``0..n-1``; the last keeps ``budget`` rows (``None``: all it
    passes). ``make_inputs(rows, key, need, step)`` builds each step's
    :class:`MethodInputs` (rows: sorted pool row ids; key: identifies them)."""
    rows, key, records, warnings = np.arange(n, dtype=np.int64), "all", [], []
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        asked = budget if last else None
        if step.fraction is not None:
            asked = budget_for(step.fraction, n)
        need = len(rows) if asked is None else min(asked, len(rows))
        inputs: MethodInputs = make_inputs(rows, key, need, step)
        ranking = get_method(step.method)(inputs, params)
        picked = rows[np.asarray(ranking.order, dtype=np.int64)]
        kept, warning = _kept(i, step, asked, len(picked), len(rows))
        if warning:
            warnings.append(warning)
        records.append({"method": step.method, "fraction": step.fraction,
                        "options": step.options, "rows_in": len(rows),
                        "filter": is_filter(step.method, step.options),
                        **ranking.info, "kept": kept})  # fmt: skip
        if last:
            return ChainResult(_on_pool(ranking, rows, picked, n), records, warnings)
        rows = np.sort(picked[:kept])
        # keyed by the survivors themselves: which rows a step keeps may change between
        # versions (filters kept a pool-order prefix before they kept the best scores)
        key = stage_key(key, step.method, step.fraction, step.options, _digest(rows))


def _kept(i: int, step: Step, asked: int | None, picked: int, rows: int) -> tuple[int, str]:
    """How many rows step ``i`` keeps of the ``picked`` it ranks (``asked``: ``None`` for
    all), and a warning when a filter passes fewer than asked."""
    name = f"step {i + 1} ({step.method})"
    if picked == 0:
        raise D2ScaleError(f"{name} passes none of its {rows:,} rows; nothing to keep.")
    if asked is None or picked >= asked:
        return (picked if asked is None else asked), ""
    if not is_filter(step.method, step.options):
        raise D2ScaleError(
            f"{name} keeps {picked:,} of {rows:,} rows, fewer than the {asked:,} asked for; "
            "lower the fraction."
        )
    return (
        picked,
        f"{name} passes {picked:,} rows, fewer than the {asked:,} asked for: kept them all",
    )


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def _on_pool(ranking: Ranking, rows: np.ndarray, picked: np.ndarray, n: int) -> Ranking:
    """The last step's ranking in pool rows: its columns are NaN for rows it never saw."""
    columns = {}
    for name, values in ranking.columns.items():
        full = np.full(n, np.nan)
        full[rows] = values
        columns[name] = full
    return Ranking(picked, columns, ranking.info)

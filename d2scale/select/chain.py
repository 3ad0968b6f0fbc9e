"""A selection chain: each step's method ranks the survivors of the step before (``select
--method basic --then clip-score:0.5 --then d2:0.3``). Fractions are of the whole pool."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.methods import MethodInputs, check_step, get_method
from d2scale.params import SelectParams, Step, budget_for, parse_step
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


def output_fractions(params: SelectParams, steps: list[Step]) -> list[float]:
    """The fractions written: the last ``--then`` step's own, else ``--fraction``."""
    last = steps[-1]
    return [last.fraction] if len(steps) > 1 and last.fraction is not None else params.fraction


@dataclass
class ChainResult:
    """The final ranking over pool rows and one record per step (for ``run.json``)."""

    ranking: Ranking
    steps: list[dict] = field(default_factory=list)


def run_chain(steps: list[Step], n: int, budget: int, make_inputs, params) -> ChainResult:
    """Run ``steps`` over rows ``0..n-1``; ``make_inputs(rows, key, need, step)`` builds each
    step's :class:`MethodInputs` (rows: sorted pool row ids; key: identifies them)."""
    rows, key, records = np.arange(n, dtype=np.int64), "all", []
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if last or step.fraction is not None:
            need = budget if last else budget_for(step.fraction, n)
        else:
            need = len(rows)  # a step without a fraction keeps every row it ranks
        inputs: MethodInputs = make_inputs(rows, key, min(need, len(rows)), step)
        ranking = get_method(step.method)(inputs, params)
        picked = rows[np.asarray(ranking.order, dtype=np.int64)]
        need = need if last or step.fraction is not None else len(picked)
        if len(picked) < need:
            raise D2ScaleError(
                f"step {i + 1} ({step.method}) keeps {len(picked):,} of {len(rows):,} rows, "
                f"fewer than the {need:,} asked for; lower the fraction."
            )
        records.append({"method": step.method, "fraction": step.fraction,
                        "options": step.options, "rows_in": len(rows),
                        "kept": int(need),
                        **ranking.info})  # fmt: skip
        if last:
            return ChainResult(_on_pool(ranking, rows, picked, n), records)
        rows = np.sort(picked[:need])
        key = stage_key(key, step.method, step.fraction, step.options, len(rows))


def _on_pool(ranking: Ranking, rows: np.ndarray, picked: np.ndarray, n: int) -> Ranking:
    """The last step's ranking in pool rows: its columns are NaN for rows it never saw."""
    columns = {}
    for name, values in ranking.columns.items():
        full = np.full(n, np.nan)
        full[rows] = values
        columns[name] = full
    return Ranking(picked, columns, ranking.info)

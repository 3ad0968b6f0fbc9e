"""Random selection: a seeded permutation of the rows, the baseline every method must beat."""

from __future__ import annotations

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.methods._options import step_options
from d2scale.params import PARAMS
from d2scale.types import Ranking


def random_order(n: int, seed: int) -> np.ndarray:
    """All ``n`` rows in a random order (int64) drawn from ``default_rng(seed)``; every
    prefix is a uniform random subset of its size."""
    if n < 0:
        raise ValueError(f"n must be ≥ 0; got {n}")
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


DESCRIPTION = "a seeded random order (option seed=S, default --seed): the baseline"


def options(given: dict, params) -> dict:
    """``seed`` (default ``--seed``)."""
    values = step_options("random", given, {"seed": (int, params.seed)})
    try:
        PARAMS["seed"].check(values["seed"])  # default_rng takes no negative seed
    except D2ScaleError as e:
        raise D2ScaleError(f"method 'random': {e}") from None
    return values


def rank(inputs, params) -> Ranking:
    """Registry adapter: ``random_order`` over the step's rows."""
    seed = options(inputs.options, params)["seed"]
    return Ranking(random_order(inputs.n, seed), {}, {"seed": seed})

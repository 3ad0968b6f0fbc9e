"""Selection methods behind one interface: ``rank(inputs, params) -> Ranking``.

A method module defines ``rank`` and a one-line ``DESCRIPTION``; :data:`METHODS` names the
module of each method, imported only when it is used (so ``select`` never imports what it
does not run). The pipeline turns a :class:`~d2scale.types.Ranking` into subset files for
every requested fraction, so one run serves all fractions; in a chain (``--then``) each step
ranks the survivors of the step before.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from d2scale.methods.base import MethodInputs
from d2scale.methods.registry import METHODS
from d2scale.params import check
from d2scale.types import Ranking

RankFn = Callable[[MethodInputs, object], Ranking]


def get_method(name: str) -> RankFn:
    """The ``rank`` function of method ``name``."""
    check("method", name)
    return importlib.import_module(METHODS[name]).rank


__all__ = ["METHODS", "MethodInputs", "Ranking", "get_method"]

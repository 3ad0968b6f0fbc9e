"""Selection methods behind one interface: ``rank(inputs, params) -> Ranking``.

A method module defines ``rank``, a one-line ``DESCRIPTION`` and, if it takes step options
(``--then semdedup:eps=0.05``), ``options(given, params) -> dict`` that parses and checks them,
and ``FLAGS`` if it reads global graph or message-passing flags (:func:`flags_read`);
:data:`METHODS` names the module of each method, imported only when it is used (so
``select`` never imports what it does not run). Every step of a chain is checked with
:func:`check_step` before any work starts. The pipeline turns a
:class:`~d2scale.types.Ranking` into subset files for every requested fraction, so one run
serves all fractions; in a chain (``--then``) each step ranks the survivors of the step
before.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from d2scale.errors import D2ScaleError
from d2scale.methods._options import step_options
from d2scale.methods.base import MethodInputs
from d2scale.methods.registry import METHODS
from d2scale.params import Step
from d2scale.types import Ranking

RankFn = Callable[[MethodInputs, object], Ranking]


def method_module(name: str) -> ModuleType:
    """The module implementing method ``name`` (one sentence for an unknown name)."""
    if name not in METHODS:
        raise D2ScaleError(
            f"the 'method' parameter must be one of {', '.join(METHODS)}; got {name!r}."
        )
    return importlib.import_module(METHODS[name])


def get_method(name: str) -> RankFn:
    """The ``rank`` function of method ``name``."""
    return method_module(name).rank


def check_step(step: Step, params) -> dict:
    """The options of ``step`` as its method parses them: an unknown method, an unknown
    option or a bad value is one sentence, before any work starts. A method module without
    ``options`` takes none."""
    module = method_module(step.method)
    if not hasattr(module, "options"):
        return step_options(step.method, step.options, {})
    return module.options(step.options, params)


def flags_read(step: Step) -> set[str]:
    """The global flags (of the graph and message passing) that ``step`` reads: its
    module's ``FLAGS``, less those the step sets as its own options."""
    return set(getattr(method_module(step.method), "FLAGS", ())) - set(step.options)


__all__ = ["METHODS", "MethodInputs", "Ranking", "check_step", "flags_read", "get_method",
           "method_module"]  # fmt: skip

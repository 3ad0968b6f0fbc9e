"""A chain step's own options (``--then semdedup:eps=0.05,clusters=64``), parsed and checked."""

from __future__ import annotations

import math
from typing import Any

from d2scale.errors import D2ScaleError

REQUIRED = object()


def step_options(method: str, given: dict, spec: dict[str, tuple[type, Any]]) -> dict:
    """``given`` (strings) parsed by ``spec`` (name → (type, default or REQUIRED)); an
    unknown, missing or unparsable option is one sentence naming the method."""
    unknown = sorted(set(given) - set(spec))
    if unknown:
        takes = ", ".join(spec) or "no options"
        raise D2ScaleError(f"method {method!r} takes {takes}; got the option {unknown[0]!r}.")
    values = {}
    for name, (kind, default) in spec.items():
        if name not in given:
            if default is REQUIRED:
                raise D2ScaleError(f"method {method!r} needs the option {name}=VALUE.")
            values[name] = default
            continue
        try:
            value = kind(given[name])
        except ValueError:
            raise D2ScaleError(
                f"method {method!r}: option {name} must be {_what(kind)}; got {given[name]!r}."
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise D2ScaleError(f"method {method!r}: option {name} must be finite.")
        values[name] = value
    return values


def _what(kind: type) -> str:
    return {int: "an integer", float: "a number"}.get(kind, "a string")


def at_least(method: str, values: dict, low: int, *names: str) -> dict:
    """``values`` (parsed step options), refused where an integer option of ``names`` is
    below ``low`` (``iterations=0`` would run no k-means step at all)."""
    for name in names:
        if values.get(name) is not None and values[name] < low:
            raise D2ScaleError(
                f"method {method!r}: option {name} must be ≥ {low}; got {values[name]}."
            )
    return values

"""The parameters of ``d2scale vision``, written once: each one's default, choices and range.
The CLI generates its flags from this table (``cli/flags.py:add_flag``) and the library's
dataclasses (:class:`~d2scale.vision.coresets.CoresetParams`,
:class:`~d2scale.vision.prune.PruneParams`) take their defaults from it. A leaf module: the
CLI reads it while building ``--help``, without importing torch.

Keys are unique; two commands' different parameters of one flag name (``train
--iterations``: SGD steps; ``prune --iterations``: selection rounds) have two keys.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from d2scale.params import MAX_SEED, Param, param_field, shared
from d2scale.vision.defaults import (
    CIFAR_ITERATIONS,
    DEFAULT_QUOTER,
    DEFAULT_RECALL_SMOOTHING,
    DEFAULT_THREADS,
)
from d2scale.vision.registry import (
    AL_SCORERS,
    CORESET_METHODS,
    DATASETS,
    DP_SCORERS,
    METHODS,
    MODELS,
    SCORE_ALIASES,
    SCORER_NOTES,
    SCORES,
)

QUOTERS = ("none", "uniform", "drop")
RECALL_SMOOTHINGS = ("none", "laplace")
STRATEGIES = ("dp", "al")
STRATEGY_ALIASES = {"1": "dp", "0": "al"}  # DRoP seed's --strategy 1|0
CORESET_MODES = ("class", "global")
SAMPLING_MODES = {  # the D2 seed's --sampling-mode → --method
    "graph": "d2",
    "stratified": "ccs",
    "random": "random",
    "kcenter": "kcenter",
    "moderate": "moderate",
    "topk": "topk",
}
PROTOCOLS = ("d2", "drop")
MC_PASSES = 5  # MC-dropout passes per uncertainty score (the seed's --bald_k)
NUM_INITS = 1  # DRoP query models per selection without --auto-config
# DRoP auto-config (pruning): query models per selection; scorers not listed keep --num-inits
AUTO_NUM_INITS = {"el2n": 5, "grand": 5, "dynunc": 1, "forgetting": 1, "kcenter": 1}

# --mis-ratio auto (D2, CCS): the CCS paper's CIFAR-10 hard-cutoff rates, as the D2 seed's
# 10% command: (fraction kept at least, share removed), first match
AUTO_MIS_RATIO = ((0.5, 0.0), (0.2, 0.1), (0.0, 0.4))

_V = "vision"


def strategies_text() -> list[str]:
    """``["dp (or 1)", "al (or 0)"]``: each strategy with the DRoP seed's number for it."""
    return [f"{s} (or {a})" for s in STRATEGIES for a, t in STRATEGY_ALIASES.items() if t == s]


def _scores() -> str:
    """``forgetting, accumulated_margin/aum, …``."""
    aliases = {s: "".join(f"/{a}" for a, t in SCORE_ALIASES.items() if t == s) for s in SCORES}
    return ", ".join(s + aliases[s] for s in SCORES)


def _methods(flag: str) -> list[str]:
    return [name for name, m in CORESET_METHODS.items() if getattr(m, flag)]


def _auto_mis_ratio() -> str:
    """``d2/ccs 0 at ≥ 50%% kept, 0.1 at ≥ 20%%, 0.4 below`` (argparse's %% escapes)."""
    *steps, (_, below) = AUTO_MIS_RATIO
    rules = [f"{r:g} at ≥ {100 * f:g}%% kept" for f, r in steps] + [f"{below:g} below"]
    return f"{'/'.join(_methods('removes_mislabeled'))} {', '.join(rules)}"


def _scorers(names: tuple[str, ...]) -> str:
    """The names, with their notes."""
    return ", ".join(n + (f" ({SCORER_NOTES[n]})" if n in SCORER_NOTES else "") for n in names)


def _p(name: str, kind: str, default: Any, help: str, **kw: Any) -> Param:
    """A vision entry; ``{range}`` in its help becomes its range ("in (0, 1]")."""
    p = Param(name, kind, default, help, _V, (), **kw)
    return replace(p, help=help.replace("{range}", p.range_text()))


VISION: dict[str, Param] = {
    # --- data, model, training ---------------------------------------------------------------
    "dataset": _p("dataset", "choice", "cifar10", "as the seeds", choices=DATASETS),
    "model": _p("model", "choice", None, "", choices=MODELS, optional=True),
    "epochs": _p("epochs", "int", None, "full-data epochs (default: the recipe's)", low=1,
                 optional=True),
    "iterations": _p("iterations", "int", None, "SGD steps of coreset runs (default: the "
                     f"recipe's; CIFAR {CIFAR_ITERATIONS})", low=1, optional=True),
    "batch_size": _p("batch_size", "int", None, "samples per SGD step (default: the recipe's)",
                     low=1, optional=True),
    "lr": _p("lr", "float", None, "peak learning rate (default: the recipe's)", low=0,
             low_open=True, optional=True),
    "seed": _p("seed", "int", 0, "every random choice", low=0, high=MAX_SEED),
    "device": shared("device", "auto: CUDA when torch sees a GPU, else the CPU", _V),
    "threads": _p("threads", "int", DEFAULT_THREADS, "torch CPU threads. These models are "
                  "small per sample, so one thread is the fastest on a small or shared CPU "
                  "(digits on the loaded 2-core dev machine: several times faster than torch's "
                  "default of one per core); raise it for large models on many free cores. The "
                  "count changes float summation order, so results differ slightly; "
                  "metrics.json records it", low=1),
    "gpuid": _p("gpuid", "int", None, "D2 seed: GPU N if there is one, else the CPU with a "
                "warning (recorded)", low=0, optional=True, metavar="N"),
    # --- coreset selection ---------------------------------------------------------------------
    "method": _p("method", "choice", None, "required to select (or the seed's --sampling-mode)",
                 choices=METHODS, optional=True),
    "sampling_mode": _p("sampling_mode", "choice", None, "seed alias of --method ("
                        + ", ".join(f"{k} = {v}" for k, v in SAMPLING_MODES.items() if k != v)
                        + ")", choices=tuple(SAMPLING_MODES), optional=True),
    "fraction": _p("fraction", "float", None, "fraction of the training set kept, {range}",
                   low=0, high=1, low_open=True),
    "score": _p("score", "str", "forgetting", f"training-dynamics score ({_scores()})"),
    "mis_ratio": _p("mis_ratio", "str", "auto", "share of samples removed first by lowest AUM "
                    f"(auto: {_auto_mis_ratio()}; other methods 0)"),
    "coreset_mode": _p("coreset_mode", "choice", None, "pick per class (default for "
                       f"{', '.join(_methods('per_class'))}) or over all samples",
                       choices=CORESET_MODES, optional=True),
    "budget_mode": _p("budget_mode", "choice", "uniform", "class budgets: small classes whole, "
                      "the rest even (seed's uniform)", choices=("uniform",)),
    "n_neighbors": _p("n_neighbors", "int", 5, "D2: k of each class's kNN graph", low=1),
    "gamma": _p("gamma", "float", 0.1, "D2 reverse kernel width γr", low=0),
    "gamma_forward": _p("gamma_forward", "float", 1.0, "D2 forward kernel width", low=0),
    "mode": shared("mode", "D2 forward message combination", _V),
    "sampling": shared("sampling", "D2 reverse update", _V),
    "strata": _p("strata", "int", 50, "CCS score strata", low=1),
    # --- experiment ----------------------------------------------------------------------------
    "protocol": _p("protocol", "choice", "d2", "", choices=PROTOCOLS),
    "seeds": _p("seeds", "str", "0,1,2", ""),
    # --- quotas and prune (DRoP) ---------------------------------------------------------------
    "counts": _p("counts", "str", None, "class sizes, comma list", optional=True),
    "class_size": _p("class_size", "int", None, "", low=0),  # one item of --counts
    "quoter": _p("quoter", "choice", DEFAULT_QUOTER, "per-class quotas", choices=QUOTERS),
    "prune_quoter": _p("quoter", "choice", DEFAULT_QUOTER, "per-class quotas",
                       choices=(*QUOTERS, "auto")),  # the seed's Auto: none
    "strategy": _p("strategy", "choice", "dp", " | ".join(strategies_text()),
                   choices=STRATEGIES),
    "final_frac": _p("final_frac", "float", None, "fraction kept (dp) or labelled (al) at the "
                     "end", low=0, high=1, low_open=True),
    "scorer": _p("scorer", "str", "random", f"dp: {_scorers(DP_SCORERS)}; al: "
                 f"{', '.join(AL_SCORERS)}"),
    "num_inits": _p("num_inits", "int", None, "query models per selection", low=1,
                    optional=True),
    "prune_iterations": _p("iterations", "int", 1, "selection iterations; fractions "
                           "interpolate linearly to the final one", low=1),
    "dropout": _p("dropout", "float", 0.0, "dropout before the last layer of query and final "
                  "models (MC-dropout acquisition)", low=0, high=1, high_open=True),
    "mc_passes": _p("mc_passes", "int", MC_PASSES, "al: MC-dropout passes of entropy, margin, "
                    "variation_ratio, bald", low=1),
    "query_epochs": _p("query_epochs", "int", None, "query-model epochs (default: recipe)",
                       low=1, optional=True),
    "recall_smoothing": _p("recall_smoothing", "choice", DEFAULT_RECALL_SMOOTHING, "validation "
                           "recall", choices=RECALL_SMOOTHINGS),
}  # fmt: skip


def vfield(key: str) -> Any:
    """A dataclass field whose default is the table's (``n_neighbors: int = vfield(...)``)."""
    return param_field(VISION[key])

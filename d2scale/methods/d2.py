"""D2 Pruning (SPEC §1) as a selection method: forward and reverse message passing over the
symmetrised kNN graph, each a keyed stage (a rerun with another ``gamma`` reuses the forward
pass; a smaller budget reuses a longer pick order)."""

from __future__ import annotations

import dataclasses

import numpy as np

from d2scale import io
from d2scale.backends import resolve_device
from d2scale.d2.bucketed import check_bucket_count
from d2scale.d2.forward import forward_on
from d2scale.d2.order import checked_scores
from d2scale.d2.reverse import cpu_only_variant, reverse_on
from d2scale.errors import D2ScaleError
from d2scale.graph.symmetric import symmetrize
from d2scale.methods.base import GRAPH_FLAGS, MESSAGE_PASSING_FLAGS, MethodInputs
from d2scale.params import PARAMS, SelectParams
from d2scale.stages import stage_key
from d2scale.types import Ranking

DESCRIPTION = (
    "D2 Pruning: forward and reverse message passing on the kNN graph (default); options "
    "gamma, gamma_forward, mode, sampling, greedy, buckets override the global flags"
)
OVERRIDES = MESSAGE_PASSING_FLAGS  # the step options
FLAGS = (*GRAPH_FLAGS, *OVERRIDES)  # the global flags it reads


def options(given: dict, params) -> dict:
    """The step's message-passing parameters, parsed and checked as their flags are
    (``--then d2:0.3:gamma=0.5`` → ``{"gamma": 0.5}``); they override the global values."""
    unknown = sorted(set(given) - set(OVERRIDES))
    if unknown:
        raise D2ScaleError(
            f"method 'd2' takes {', '.join(OVERRIDES)}; got the option {unknown[0]!r}."
        )
    try:
        return {name: PARAMS[name].parse(value) for name, value in given.items()}
    except D2ScaleError as e:
        raise D2ScaleError(f"method 'd2': {e}") from None


def rank(inputs: MethodInputs, params: SelectParams) -> Ranking:
    """The D2 pick order of ``inputs``; ``forward_score`` for every row. The step's options
    override the global message-passing parameters (and so key the stages)."""
    params = dataclasses.replace(params, **options(inputs.options, params))
    scores = checked_scores(inputs.scores, inputs.n)
    check_bucket_count(params.buckets, inputs.n)  # before the graph is built
    device = resolve_device(params.device, cpu_only_variant(params.greedy, params.buckets))
    knn, graph_key = inputs.knn_graph()
    csr = None

    def symmetric():
        nonlocal csr
        csr = csr if csr is not None else symmetrize(knn)
        return csr

    def forward_pass(d: str) -> dict:
        g = forward_on(device, symmetric(), scores, params.gamma_forward, params.mode)
        io.save_npy(io.join(d, "forward.npy"), g)
        return {"n_edges": symmetric().n_edges, "device": device}

    fkey = stage_key(graph_key, inputs.upstream_key, params.stage_params("forward"))
    fwd = inputs.stages.run("forward", fkey, forward_pass)
    forward = io.load_npy(io.join(fwd.directory, "forward.npy"))

    def reverse_pass(d: str) -> dict:
        stats: dict = {}
        order = reverse_on(device, symmetric(), forward, params.gamma, inputs.budget,
                           params.sampling, params.greedy, params.buckets, knn, inputs.client,
                           stats)  # fmt: skip
        io.save_npy(io.join(d, "order.npy"), order)
        return {"budget": inputs.budget, **stats}

    rkey = stage_key(fkey, params.stage_params("reverse"))
    rev = inputs.stages.run(
        "reverse", rkey, reverse_pass, accept=lambda info: info.get("budget", -1) >= inputs.budget
    )
    order = io.load_npy(io.join(rev.directory, "order.npy"))[: inputs.budget]
    info = {"n_edges": fwd.info["n_edges"], "forward_device": fwd.info["device"], **rev.info,
            "message_passing": {name: getattr(params, name) for name in OVERRIDES}}  # fmt: skip
    return Ranking(np.asarray(order, dtype=np.int64), {"forward_score": forward}, info)

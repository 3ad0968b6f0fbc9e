"""Coreset methods: hand-checked budgets and strata, D2 class mode against the plain oracle,
k-center against a brute-force loop."""

from __future__ import annotations

import numpy as np
import oracle
import pytest

from d2scale.errors import D2ScaleError
from d2scale.params import budget_for
from d2scale.vision.coresets import (
    CoresetParams,
    class_budgets,
    kcenter_greedy,
    knn_graph,
    moderate,
    select_coreset,
    stratified_sampling,
)


def _run(n_per=(30, 24, 18), dim=6, seed=0):
    """Scores and features of three Gaussian classes (float32-exact features)."""
    rng = np.random.default_rng(seed)
    targets = np.concatenate([np.full(n, c) for c, n in enumerate(n_per)])
    rng.shuffle(targets)
    features = (rng.normal(size=(len(targets), dim)) + 3 * targets[:, None]).astype(np.float32)
    scores = {
        "targets": targets,
        "forgetting": rng.integers(0, 4, len(targets)).astype(np.float32),
        "accumulated_margin": rng.normal(size=len(targets)).astype(np.float32),
        "el2n": rng.random(len(targets)).astype(np.float32),
    }
    return scores, features


def test_class_budgets_by_hand():
    # share 5: classes of 2 and 5 are taken whole; 13 left for two classes of 10 → 6 + 6,
    # and the remainder 1 goes to the largest class (tie → lower id)
    assert class_budgets([2, 10, 5, 10], 20).tolist() == [2, 7, 5, 6]
    assert class_budgets([10, 10, 10], 10).tolist() == [4, 3, 3]
    assert class_budgets([3, 3], 6).tolist() == [3, 3]
    assert class_budgets([0, 4], 2).tolist() == [0, 2]
    with pytest.raises(D2ScaleError):
        class_budgets([1, 1], 3)


def test_ccs_strata_allocation_by_hand():
    # five equal-width strata over [0.5, 4.5] of sizes 1, 2, 3, 10, 4; budget 10:
    # smallest first: 1 → min(1, 10//5)=1; 2 → min(2, 9//4)=2; 3 → min(3, 7//3)=2;
    # 4 → min(4, 5//2)=2; 10 → min(10, 3//1)=3
    score = np.repeat([0.5, 1.5, 2.5, 3.5, 4.5], [1, 2, 3, 10, 4])
    picks = stratified_sampling(score, 10, 5, np.random.default_rng(0))
    counts = [int(np.sum(score[picks] == v)) for v in (0.5, 1.5, 2.5, 3.5, 4.5)]
    assert counts == [1, 2, 2, 3, 2] and len(set(picks.tolist())) == 10
    constant = stratified_sampling(np.zeros(7), 3, 50, np.random.default_rng(0))
    assert len(constant) == 3


def test_moderate_keeps_the_middle_band_by_hand():
    feats = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    # distances to the median 2: [2, 1, 0, 1, 8] → order 2, 1, 3, 0, 4; middle 3 from 1
    assert moderate(feats, np.zeros(5, int), 3).tolist() == [1, 3, 0]


def _kcenter_bruteforce(x, budget):
    x = x.astype(np.float64)
    mean = x.mean(0)
    picks = [min(range(len(x)), key=lambda i: (np.sum((x[i] - mean) ** 2), i))]
    while len(picks) < budget:
        best, best_d = None, -1.0
        for i in range(len(x)):
            if i in picks:
                continue
            d = min(np.sqrt(np.sum((x[i] - x[c]) ** 2)) for c in picks)
            if d > best_d:
                best, best_d = i, d
        picks.append(best)
    return picks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcenter_matches_brute_force(seed):
    x = np.random.default_rng(seed).normal(size=(40, 5))
    assert kcenter_greedy(x, 12).tolist() == _kcenter_bruteforce(x, 12)


def test_kcenter_continues_from_initial_centres():
    x = np.random.default_rng(3).normal(size=(30, 4))
    full = kcenter_greedy(x, 10)
    # starting from the first 4 picks gives the next 6 picks
    assert kcenter_greedy(x, 6, initial=full[:4]).tolist() == full[4:].tolist()


def test_knn_graph_matches_brute_force():
    x = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
    got, ref = knn_graph(x, 5), oracle.knn_bruteforce(x, 5)
    assert np.array_equal(got.neighbors, ref.neighbors)
    np.testing.assert_allclose(got.distances, ref.distances, rtol=1e-6)
    tiny = knn_graph(x[:3], 5)  # fewer than k other points: -1 / inf padding
    assert (
        tiny.neighbors[:, 2:].tolist() == [[-1] * 3] * 3 and np.isinf(tiny.distances[:, 2:]).all()
    )


@pytest.mark.parametrize(("fraction", "mis_ratio"), [(0.3, 0.0), (0.5, 0.2), (0.1, "auto")])
@pytest.mark.parametrize("seed", [0, 1])
def test_d2_class_mode_matches_the_oracle(fraction, mis_ratio, seed):
    scores, features = _run(seed=seed)
    n = len(scores["targets"])
    params = CoresetParams("d2", fraction, mis_ratio=mis_ratio, seed=seed)
    got = select_coreset(params, scores, features)
    # the oracle: drop the lowest-AUM samples, budgets by hand, one plain D2 per class
    ratio = 0.4 if mis_ratio == "auto" else mis_ratio
    keep = np.sort(np.argsort(scores["accumulated_margin"], kind="stable")[int(ratio * n) :])
    t = scores["targets"]
    pools = [keep[t[keep] == c] for c in range(3)]
    budgets = class_budgets([len(p) for p in pools], int(fraction * n))
    want = []
    for pool, b in zip(pools, budgets, strict=True):
        order, _ = oracle.d2_order(
            oracle.knn_bruteforce(features[pool], 5),
            scores["forgetting"][pool],
            gamma=0.1,
            budget=int(b),
        )
        want += pool[order].tolist()
    assert got.indices.tolist() == sorted(want)
    assert got.info["class_budgets"] == budgets.tolist()


def test_d2_global_mode_matches_the_oracle():
    scores, features = _run(seed=4)
    params = CoresetParams("d2", 0.4, mis_ratio=0, coreset_mode="global", n_neighbors=3)
    got = select_coreset(params, scores, features)
    order, _ = oracle.d2_order(
        oracle.knn_bruteforce(features, 3),
        scores["forgetting"],
        gamma=0.1,
        budget=int(0.4 * len(features)),
    )
    assert got.indices.tolist() == sorted(order.tolist())


@pytest.mark.parametrize("method", ["random", "topk", "d2", "ccs", "moderate", "kcenter"])
@pytest.mark.parametrize("mode", ["class", "global"])
def test_every_method_keeps_exactly_the_budget(method, mode):
    scores, features = _run()
    params = CoresetParams(method, 0.29, score="el2n", mis_ratio=0.1, coreset_mode=mode)
    got = select_coreset(params, scores, features)
    n = len(features)
    assert len(got.indices) == budget_for(0.29, n) == 20
    assert len(np.unique(got.indices)) == 20 and np.all(np.diff(got.indices) > 0)
    removed = np.argsort(scores["accumulated_margin"], kind="stable")[: int(0.1 * n)]
    assert not set(removed.tolist()) & set(got.indices.tolist())  # lowest AUM never kept
    again = select_coreset(
        CoresetParams(method, 0.29, score="el2n", mis_ratio=0.1, coreset_mode=mode),
        scores,
        features,
    )
    assert np.array_equal(got.indices, again.indices)  # deterministic


def test_topk_orientation_and_random_seed():
    scores, features = _run()
    top = select_coreset(CoresetParams("topk", 0.1, score="aum"), scores, features)
    lowest_margin = np.argsort(scores["accumulated_margin"], kind="stable")[:7]
    assert top.indices.tolist() == sorted(lowest_margin.tolist())  # hardest = lowest margin
    a = select_coreset(CoresetParams("random", 0.5, seed=1), scores, features).indices
    b = select_coreset(CoresetParams("random", 0.5, seed=2), scores, features).indices
    assert not np.array_equal(a, b)


def test_quotas_force_class_mode():
    scores, features = _run()
    got = select_coreset(
        CoresetParams("random", 0.5), scores, features, class_budget=np.array([1, 2, 3])
    )
    assert np.bincount(scores["targets"][got.indices]).tolist() == [1, 2, 3]
    with pytest.raises(D2ScaleError, match="exceeds"):
        select_coreset(
            CoresetParams("random", 0.5), scores, features, class_budget=np.array([31, 0, 0])
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "herding"}, "--method must be one of"),
        ({"fraction": 0}, "--fraction must be in"),
        ({"fraction": 0.7, "mis_ratio": 0.4}, r"--mis-ratio must be in \[0, 1 − fraction\]"),
        ({"score": "loss"}, "--score must be one of"),
        ({"coreset_mode": "both"}, "--coreset-mode"),
        ({"gamma": -1}, "--gamma must be"),
    ],
)
def test_bad_parameters_are_one_sentence(kwargs, message):
    base = {"method": "d2", "fraction": 0.3}
    with pytest.raises(D2ScaleError, match=message):
        CoresetParams(**{**base, **kwargs}).validate()


def test_kcenter_dense_and_row_paths_agree(monkeypatch):
    import d2scale.vision.coresets as cs

    x = np.random.default_rng(5).normal(size=(60, 6))
    dense = kcenter_greedy(x, 15)
    monkeypatch.setattr(cs, "KCENTER_DENSE_MAX", 0)
    assert kcenter_greedy(x, 15).tolist() == dense.tolist()


def test_selection_leaves_torch_threads_alone(monkeypatch):
    # faiss / numba OpenMP calls can set the process-wide thread count, which torch shares;
    # training after a selection then oversubscribed the cores (~20× slower under load)
    import torch

    import d2scale.vision.coresets as cs

    real = cs.knn_graph

    def knn_with_side_effect(x, k):
        torch.set_num_threads(2)  # what the OpenMP runtime did
        return real(x, k)

    monkeypatch.setattr(cs, "knn_graph", knn_with_side_effect)
    torch.set_num_threads(1)
    scores, features = _run()
    select_coreset(CoresetParams("d2", 0.3), scores, features)
    assert torch.get_num_threads() == 1


def test_every_registered_coreset_method_has_a_picker():
    """A coreset method is one registry entry (what it reads) and one picker."""
    from d2scale.vision.coresets import PICKERS
    from d2scale.vision.registry import CORESET_METHODS

    assert set(PICKERS) == set(CORESET_METHODS)

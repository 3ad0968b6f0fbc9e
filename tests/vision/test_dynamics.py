"""Training-dynamics scores: hand-checked updates and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from d2scale.errors import D2ScaleError
from d2scale.vision.dynamics import (
    DynamicsLog,
    difficulty,
    dynamic_uncertainty,
    score_name,
)


def _logits_for(correct: list[bool], y: torch.Tensor, confident: float = 4.0) -> torch.Tensor:
    """Logits predicting y (correct) or y+1 (wrong) for 3 classes."""
    out = torch.zeros(len(correct), 3)
    for i, ok in enumerate(correct):
        out[i, int(y[i]) if ok else (int(y[i]) + 1) % 3] = confident
    return out


def test_forgetting_counts_correct_to_incorrect_transitions():
    log = DynamicsLog(2, epochs=6, device=torch.device("cpu"))
    y = torch.tensor([0, 1])
    idx = torch.tensor([0, 1])
    h = torch.zeros(2, 4)
    # sample 0: ✗ ✓ ✗ ✓ ✗ ✓ → forgotten twice; sample 1: never learned → 0
    for epoch, ok in enumerate([False, True, False, True, False, True]):
        log.update(epoch, idx, _logits_for([ok, False], y), y, h)
    res = log.result(np.zeros(2), y.numpy())
    assert res["forgetting"].tolist() == [2, 0]
    assert res["presentations"].tolist() == [6, 6]


def test_margin_el2n_grand_by_hand():
    log = DynamicsLog(1, epochs=12, device=torch.device("cpu"))
    y = torch.tensor([2])
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    h = torch.tensor([[3.0, 4.0]])  # ‖h‖² = 25
    for epoch in range(12):
        log.update(epoch, torch.tensor([0]), logits, y, h)
    res = log.result(np.zeros(1), y.numpy())
    assert res["accumulated_margin"][0] == pytest.approx(12 * (0.5 - 0.3), rel=1e-5)
    err = math.sqrt(0.2**2 + 0.3**2 + 0.5**2)
    assert res["el2n"][0] == pytest.approx(err, rel=1e-5)  # mean over the first 10 epochs
    assert res["grand"][0] == pytest.approx(err * math.sqrt(26), rel=1e-5)


def test_grand_is_the_last_layer_gradient_norm():
    torch.manual_seed(0)
    fc = torch.nn.Linear(5, 4)
    h = torch.randn(3, 5)
    y = torch.tensor([0, 3, 1])
    logits = fc(h)
    log = DynamicsLog(3, epochs=1, device=torch.device("cpu"))
    log.update(0, torch.arange(3), logits.detach(), y, h)
    got = log.result(np.zeros(3), y.numpy())["grand"]
    for i in range(3):
        fc.zero_grad()
        torch.nn.functional.cross_entropy(fc(h[i : i + 1]), y[i : i + 1]).backward()
        norm = torch.sqrt(fc.weight.grad.pow(2).sum() + fc.bias.grad.pow(2).sum())
        assert got[i] == pytest.approx(float(norm), rel=1e-5)


def test_invariants_on_random_training_signals():
    rng = np.random.default_rng(0)
    n, epochs, k = 50, 15, 5
    log = DynamicsLog(n, epochs, torch.device("cpu"))
    y = torch.from_numpy(rng.integers(0, k, n))
    for epoch in range(epochs):
        perm = torch.from_numpy(rng.permutation(n))
        for part in torch.tensor_split(perm, 3):
            logits = torch.from_numpy(rng.normal(size=(len(part), k)) * 3).float()
            log.update(epoch, part, logits, y[part], torch.randn(len(part), 8))
    res = log.result(np.zeros(n), y.numpy())
    assert np.all(res["forgetting"] <= res["presentations"] // 2)  # each needs a prior learning
    assert np.all(res["forgetting"] <= res["presentations"])
    assert np.all((res["el2n"] >= 0) & (res["el2n"] <= math.sqrt(2) + 1e-6))
    assert np.all(np.abs(res["accumulated_margin"]) <= epochs)
    assert np.all((res["dynamic_uncertainty"] >= 0) & (res["dynamic_uncertainty"] <= 0.5))


def test_dynamic_uncertainty_windows():
    p = np.array([[0.0, 0.5], [1.0, 0.5], [0.0, 0.5]], dtype=np.float32)  # 3 epochs, 2 samples
    # window 2: stds 0.5 and 0.5 → mean 0.5; constant sample → 0
    assert dynamic_uncertainty(p, window=2).tolist() == [0.5, 0.0]
    # fewer epochs than the window: one window of every epoch
    assert dynamic_uncertainty(p, window=10)[0] == pytest.approx(np.std([0, 1, 0]))
    p[:, 1] = np.nan  # never presented → 0
    assert dynamic_uncertainty(p, window=2)[1] == 0.0


def test_score_names_and_orientation():
    assert score_name("AUM") == "accumulated_margin" and score_name("dynunc") == (
        "dynamic_uncertainty"
    )
    with pytest.raises(D2ScaleError, match="--score must be one of"):
        score_name("loss")
    scores = {"accumulated_margin": np.array([1.0, -2.0]), "el2n": np.array([0.1, 0.3])}
    assert difficulty(scores, "aum").tolist() == [-1.0, 2.0]  # low margin = hard
    assert difficulty(scores, "el2n").tolist() == [0.1, 0.3]

"""DRoP quotas checked by hand: proportions, saturation and redistribution, rounding,
zero error; and the ``d2scale vision quotas`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from d2scale.cli.main import main
from d2scale.errors import D2ScaleError
from d2scale.vision.quotas import (
    class_quotas,
    drop_quotas,
    estimate_recall,
    quotas_report,
    uniform_quotas,
)


def test_quotas_proportional_to_class_error():
    # errors 0.1, 0.3, 0.6 over classes of 100: Σ N·err = 100; budget 50 →
    # densities 0.05, 0.15, 0.30 → counts 5, 15, 30 exactly (no rounding)
    q = drop_quotas([100, 100, 100], [0.9, 0.7, 0.4], 50)
    assert q.tolist() == [5, 15, 30]


def test_saturated_class_excess_is_redistributed_in_proportion():
    # errors 0.8, 0.1, 0.1, budget 150: densities 1.2, 0.15, 0.15 → class 0 saturates at
    # 100; the other 50 go to classes 1 and 2 in proportion 0.1 : 0.1 → 25 each
    q = drop_quotas([100, 100, 100], [0.2, 0.9, 0.9], 150)
    assert q.tolist() == [100, 25, 25]
    # a cascade: counts 10, 40, 100; errors 0.9, 0.5, 0.1; budget 70:
    # round 1: Σ N·err = 9 + 20 + 10 = 39 → densities 1.62, 0.90, 0.18 → class 0 full (10)
    # round 2: 60 left, Σ = 20 + 10 = 30 → densities 1.0, 0.2 → class 1 full (40)
    # round 3: 20 left for class 2 alone → 20
    assert drop_quotas([10, 40, 100], [0.1, 0.5, 0.9], 70).tolist() == [10, 40, 20]


def test_rounding_leftovers_go_to_random_classes_seeded():
    counts, recalls = [500, 500, 500, 500], [0.98, 0.71, 0.9, 0.5]
    # budget 600, Σ N·err = 455: raw 13.19, 191.21, 65.93, 329.67 → floors 13, 191, 65, 329
    # (598); the two leftover slots go to two different classes
    seen = set()
    for seed in range(20):
        q = drop_quotas(counts, recalls, 600, seed=seed)
        extra = q - np.array([13, 191, 65, 329])
        assert q.sum() == 600 and sorted(extra.tolist()) == [0, 0, 1, 1]
        seen.add(tuple(extra))
    assert len(seen) > 1  # the seed decides which classes
    assert np.array_equal(
        drop_quotas(counts, recalls, 600, 3), drop_quotas(counts, recalls, 600, 3)
    )


def test_zero_error_falls_back_to_uniform():
    assert drop_quotas([10, 30], [1.0, 1.0], 20).tolist() == [5, 15]
    assert uniform_quotas([10, 30], 20).tolist() == [5, 15]


def test_perfect_classes_get_nothing_until_the_erring_ones_are_full():
    assert drop_quotas([10, 10], [1.0, 0.5], 5).tolist() == [0, 5]
    # budget beyond the erring class: it saturates and the perfect class takes the rest
    assert drop_quotas([10, 10], [1.0, 0.5], 15).tolist() == [5, 10]


def test_bad_inputs_are_one_sentence():
    with pytest.raises(D2ScaleError, match="recalls in"):
        drop_quotas([10, 10], [0.5], 5)
    with pytest.raises(D2ScaleError, match="recalls in"):
        drop_quotas([10, 10], [0.5, 1.5], 5)
    with pytest.raises(D2ScaleError, match="cannot keep 30 of 20"):
        drop_quotas([10, 10], [0.5, 0.5], 30)
    with pytest.raises(D2ScaleError, match="--quoter must be"):
        class_quotas("fair", [1], [1.0], 1)
    assert class_quotas("none", [3, 3], None, 2) is None


def test_quotas_command_prints_hand_checkable_json(capsys):
    argv = [
        "vision",
        "quotas",
        "--counts",
        "100,100,100",
        "--recalls",
        "0.2,0.9,0.9",
        "--fraction",
        "0.5",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget"] == 150 and out["quotas"] == [100, 25, 25]
    assert out["saturated"] == [0] and out["densities"] == [1.0, 0.25, 0.25]
    assert quotas_report([4, 4], None, 0.5, "uniform")["quotas"] == [2, 2]
    assert main(["vision", "quotas", "--counts", "10,10", "--fraction", "0.5"]) == 1
    assert "needs per-class validation recalls" in capsys.readouterr().err


def test_laplace_smoothing_keeps_perfect_classes_in_play():
    r = estimate_recall([1.0, 0.5], [36, 10], "laplace")
    assert r.tolist() == pytest.approx([37 / 38, 6 / 12])
    assert estimate_recall([1.0, 0.5], [36, 10], "none").tolist() == [1.0, 0.5]
    # measured recall 1.0 → quota 0; smoothed → a small but non-zero share
    assert drop_quotas([36, 10], [1.0, 0.5], 10).tolist() == [0, 10]
    assert drop_quotas([36, 10], estimate_recall([1.0, 0.5], [36, 10], "laplace"), 10)[0] > 0
    with pytest.raises(D2ScaleError, match="--recall-smoothing must be none or laplace"):
        estimate_recall([1.0], [3], "bayes")

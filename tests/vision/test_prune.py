"""DRoP workflow: fraction schedule, AL never re-acquires, quotas respected, one-epoch end
to end runs of both strategies from the command line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from d2scale.cli.main import main
from d2scale.errors import D2ScaleError
from d2scale.vision.prune import (
    PruneParams,
    _acquire_step,
    _prune_step,
    _Query,
    initial_labelled,
    target_sizes,
)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def test_target_sizes_interpolate_and_end_exactly():
    dp = PruneParams("dp", 0.4, iterations=3).validate()
    assert target_sizes(dp, 100) == [80, 60, 40]
    assert target_sizes(PruneParams("dp", 0.29).validate(), 1000) == [290]
    al = PruneParams("al", 0.4, init_frac=0.1, iterations=3).validate()
    assert target_sizes(al, 100) == [20, 30, 40]
    default = PruneParams("al", 0.3, iterations=2).validate()
    assert default.init_frac == pytest.approx(0.1) and target_sizes(default, 1078)[-1] == 323


def _fake_query(n, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % n_classes
    scores = {
        "targets": targets,
        "final_el2n": rng.random(n),
        "grand_full": rng.random(n),
        "el2n_predicted": rng.random(n),
        "grand_predicted": rng.random(n),
        "mc_entropy": rng.random(n),
        "mc_margin": rng.random(n),
        "mc_variation_ratio": rng.random(n),
        "mc_bald": rng.random(n),
        "entropy": rng.random(n),
        "el2n": rng.random(n),
        "accumulated_margin": rng.normal(size=n),
        "forgetting": rng.integers(0, 3, n) * 1.0,
    }
    features = rng.normal(size=(n, 4)).astype(np.float32)
    recall = np.array([0.9, 0.5, 0.7])
    return targets, _Query(scores, features, recall, [])


@pytest.mark.parametrize(
    "scorer", ["random", "el2n", "entropy", "margin", "variation_ratio", "bald", "d2", "kcenter"]
)
@pytest.mark.parametrize("quoter", ["none", "uniform", "drop"])
def test_acquisition_never_reacquires_and_fills_the_target(scorer, quoter):
    n = 90
    targets, query = _fake_query(n)
    params = PruneParams(
        "al", 0.6, init_frac=0.2, iterations=2, scorer=scorer, quoter=quoter
    ).validate()
    kept = initial_labelled(n, 0.2, 0)
    for t, size in enumerate(target_sizes(params, n)):
        new, info = _acquire_step(params, query, kept, size, targets, 3, t)
        assert not np.intersect1d(new, kept).size
        assert len(new) == size - len(kept)
        if info["quotas"] is not None:
            assert np.bincount(targets[new], minlength=3).tolist() == info["quotas"]
        kept = np.union1d(kept, new)
    assert len(kept) == 54


@pytest.mark.parametrize(
    "scorer", ["random", "el2n", "grand", "el2n-early", "aum", "d2", "kcenter"]
)
def test_pruning_keeps_the_quotas_inside_the_current_set(scorer):
    n = 90
    targets, query = _fake_query(n)
    params = PruneParams(
        "dp", 0.5, iterations=2, scorer=scorer, quoter="drop", select={"mis_ratio": 0.0}
    ).validate()
    kept = np.arange(n)
    for t, size in enumerate(target_sizes(params, n)):
        new, info = _prune_step(params, query, kept, size, targets, 3, t)
        assert set(new.tolist()) <= set(kept.tolist()) and len(new) == size
        # errors 0.1, 0.5, 0.3 → the worst class keeps the most
        assert np.bincount(targets[new], minlength=3).tolist() == info["quotas"]
        kept = new
    assert len(kept) == 45
    per_class = np.bincount(targets[kept], minlength=3)
    assert per_class[1] > per_class[2] > per_class[0]


def test_bad_parameters_are_one_sentence():
    with pytest.raises(D2ScaleError, match="--scorer for --strategy al must be one of"):
        PruneParams("al", 0.3, scorer="forgetting").validate()
    with pytest.raises(D2ScaleError, match="--init-frac must be in"):
        PruneParams("al", 0.3, init_frac=0.5).validate()
    with pytest.raises(D2ScaleError, match="--init-frac applies to --strategy al"):
        PruneParams("dp", 0.3, init_frac=0.5).validate()
    with pytest.raises(D2ScaleError, match="--final-frac must be in"):
        PruneParams("dp", 1.5).validate()
    assert PruneParams("dp", 0.5, scorer="DynamicUncertainty", quoter="auto").validate().scorer == (
        "dynunc"
    )


def test_dp_with_drop_quotas_end_to_end_with_seed_flags(tmp_path, capsys):
    out = str(tmp_path / "dp")
    argv = [
        "vision",
        "prune",
        "--dataset",
        "digits",
        "--auto_config",
        "--strategy",
        "1",
        "--final_frac",
        "0.5",
        "--scorer_name",
        "Random",
        "--quoter_name",
        "DRoP",
        "--num_inits",
        "2",
        "--cdbw_final",
        "--epochs",
        "1",
        "--out",
        out,
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    m = _read_json(os.path.join(out, "metrics.json"))
    assert m["n_kept"] == 539 and len(m["kept_indices"]) == 539
    assert sum(m["quotas"][0]) == 539 and m["kept_per_class"] == m["quotas"][0]
    assert 0 <= m["worst_class_accuracy"] <= m["test_accuracy"] <= 1
    assert len(m["per_class_accuracy"]) == 10 and m["cdbw_final"] is True
    assert len(m["iterations"][0]["query_runs"]) == 2 and m["timings"]["total"] > 0
    assert np.array_equal(np.load(os.path.join(out, "kept.npy")), m["kept_indices"])
    # a second run reuses the cached query models (same inputs, same seeds)
    mtimes = [
        os.path.getmtime(os.path.join(q, "metrics.json")) for q in m["iterations"][0]["query_runs"]
    ]
    out2 = str(tmp_path / "dp2")
    assert (
        main([*argv[:-3], "--query-cache", os.path.join(out, "query"), "--out", out2, "--quiet"])
        == 0
    )
    m2 = _read_json(os.path.join(out2, "metrics.json"))
    assert m2["quotas"] == m["quotas"]
    assert mtimes == [
        os.path.getmtime(os.path.join(q, "metrics.json")) for q in m2["iterations"][0]["query_runs"]
    ]


def test_al_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "al")
    argv = [
        "vision",
        "prune",
        "--dataset",
        "digits",
        "--strategy",
        "al",
        "--final-frac",
        "0.3",
        "--init-frac",
        "0.1",
        "--iterations",
        "2",
        "--scorer",
        "kcenter",
        "--quoter",
        "drop",
        "--epochs",
        "1",
        "--out",
        out,
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    m = _read_json(os.path.join(out, "metrics.json"))
    assert [h["size"] for h in m["iterations"]] == [215, 323] and m["n_kept"] == 323
    assert len(set(m["kept_indices"])) == 323
    for h in m["iterations"]:
        assert h["quotas"] is not None and h["val_recall"] is not None


def test_drop_experiment_grid(tmp_path, capsys):
    out = str(tmp_path / "grid")
    argv = [
        "vision",
        "experiment",
        "--protocol",
        "drop",
        "--dataset",
        "digits",
        "--methods",
        "random,random+drop",
        "--cdbw",
        "off,on",
        "--recall-smoothing",
        "none,laplace",
        "--fractions",
        "0.5",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--out",
        out,
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    records = _read_json(os.path.join(out, "results.json"))["records"]
    labels = [r["method"] for r in records]
    assert labels == [
        "full",
        "random",
        "random+cdbw",
        "random+cdbw+laplace",
        "random+drop",
        "random+drop+laplace",
        "random+drop+cdbw",
        "random+drop+cdbw+laplace",
    ]
    assert all(r["n_selected"] == 539 for r in records[1:])
    assert os.listdir(os.path.join(out, "query-cache"))  # random+drop trained a query model
    assert main([*argv[:4], "--dataset", "digits", "--methods", "random+fair", "--out", out]) == 1
    assert "unknown DRoP method 'random+fair'" in capsys.readouterr().err


def test_short_query_models_follow_the_recipe():
    from d2scale.vision.prune import PruneParams, query_recipe
    from d2scale.vision.train import recipe_for

    dp = PruneParams(strategy="dp", final_frac=0.3, scorer="random", quoter="drop")
    assert query_recipe(recipe_for("digits", "cnn", "drop"), dp, 1.0).epochs == 3  # 10% of 30
    assert query_recipe(recipe_for("mnist5k", "cnn", "drop"), dp, 1.0).epochs == 5  # recipe's
    assert query_recipe(recipe_for("mnist5k", "cnn", "drop", epochs=2), dp, 1.0).epochs == 2
    d2 = PruneParams(strategy="dp", final_frac=0.3, scorer="d2", quoter="drop")
    assert query_recipe(recipe_for("mnist5k", "cnn", "drop"), d2, 1.0).epochs == 10  # all


def test_drop_quotas_that_empty_a_class_are_reported():
    from d2scale.vision.prune import PruneParams, _warn_empty_classes

    said = []
    info = {"quotas": [0, 5, 5], "class_counts": [10, 10, 0], "val_recall": [1.0, 0.5, 0.5]}
    params = PruneParams(strategy="dp", final_frac=0.3, quoter="drop", recall_smoothing="none")
    _warn_empty_classes(info, params, said.append)
    assert len(said) == 1 and "class(es) [0]" in said[0] and "laplace" in said[0]
    assert "recall 1.0" in said[0]
    _warn_empty_classes({"quotas": [1, 5, 0], "class_counts": [10, 10, 0]}, params, said.append)
    _warn_empty_classes({"quotas": None, "class_counts": [10]}, params, said.append)
    assert len(said) == 1  # an empty class with no samples, or no quotas: nothing to say

"""DRoP's query-model scores as its released code computes them: EL2N and full-model GraNd
of the final query model in eval mode, MC-dropout uncertainty for active learning, and
``--auto-config``'s query models per selection."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2scale.cli.main import main
from d2scale.errors import D2ScaleError
from d2scale.vision import scoring
from d2scale.vision.models import build_model, has_dropout
from d2scale.vision.prune import PruneParams


class FakeData:
    """Twelve random 8×8 one-channel images of three classes, on the CPU."""

    device = torch.device("cpu")
    num_classes, in_channels, image_size = 3, 1, 8

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(12, 1, 8, 8, generator=g)
        self.y = torch.arange(12) % 3

    def size(self, split):
        return 12

    def batches(self, split, indices, batch_size, *, train, augment=None, seed=0):
        for i in range(0, 12, batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size], torch.arange(i, 12)


def _model(dropout=0.0):
    torch.manual_seed(0)
    m = build_model("cnn", 3, 1, 8, dropout)
    m.train()
    m(FakeData().x)  # BatchNorm running statistics that differ from the initial ones
    return m.eval()


def _grad_norm(model, x, y) -> float:
    model.zero_grad()
    F.cross_entropy(model(x[None]), y[None]).backward()
    return float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())))


@pytest.mark.parametrize("labels", ["true", "predicted"])
def test_grand_is_the_whole_models_gradient_norm_in_eval_mode(labels):
    data, model = FakeData(), _model()
    g = scoring.grand_scores(model, data, labels)
    with torch.no_grad():
        pred = model(data.x).argmax(1)
    y = data.y if labels == "true" else pred
    expected = [_grad_norm(model, data.x[i], y[i]) for i in range(12)]
    np.testing.assert_allclose(g, expected, rtol=1e-5)
    with torch.no_grad():  # the last layer alone (the in-training variant's) is smaller
        p = F.softmax(model(data.x), 1)
        _, h = model(data.x, features=True)
    last = (p - F.one_hot(y, 3)).norm(dim=1) * torch.sqrt(h.pow(2).sum(1) + 1)
    assert np.all(g > last.numpy() * (1 + 1e-3))


def test_el2n_uses_the_label_or_the_prediction():
    data, model = FakeData(), _model()
    with torch.no_grad():
        p = F.softmax(model(data.x), 1)
    true = (p - F.one_hot(data.y, 3)).norm(dim=1).numpy()
    pred = (p - F.one_hot(p.argmax(1), 3)).norm(dim=1).numpy()
    np.testing.assert_allclose(scoring.el2n_scores(model, data, "true"), true, rtol=1e-6)
    np.testing.assert_allclose(scoring.el2n_scores(model, data, "predicted"), pred, rtol=1e-6)


def test_uncertainty_over_mc_dropout_passes():
    data, model = FakeData(), _model(dropout=0.5)
    assert has_dropout(model) and not has_dropout(_model())
    probs = scoring.mc_probabilities(model, data, 4, seed=3)
    assert probs.shape == (12, 4, 3) and not np.allclose(probs[:, 0], probs[:, 1])
    assert np.array_equal(probs, scoring.mc_probabilities(model, data, 4, seed=3))
    assert not model.drop.training  # back in eval mode
    mean = probs.mean(1)
    ent = -(mean * np.log(mean)).sum(1)
    top = np.sort(mean, 1)
    expected = {
        "entropy": ent,
        "variation_ratio": 1 - top[:, -1],
        "margin": 1 - (top[:, -1] - top[:, -2]),
        "bald": ent - (-(probs * np.log(probs)).sum(2)).mean(1),
    }
    for name, want in expected.items():
        got = scoring.uncertainty_scores(model, data, name, 4, seed=3)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=name)
    assert np.all(expected["bald"] > 0)


def test_without_dropout_one_pass_and_bald_refuses():
    data, model = FakeData(), _model()
    with torch.no_grad():
        p = F.softmax(model(data.x), 1).double().numpy()
    got = scoring.uncertainty_scores(model, data, "entropy", 5, seed=0)
    np.testing.assert_allclose(got, -(p * np.log(p)).sum(1), rtol=1e-5)
    with pytest.raises(D2ScaleError, match="BALD needs a model with dropout"):
        scoring.uncertainty_scores(model, data, "bald", 5, seed=0)


def test_auto_config_num_inits_as_released():
    def inits(scorer, strategy="dp", auto=True, given=None):
        p = PruneParams(strategy, 0.5, scorer=scorer, auto_config=auto, num_inits=given)
        return p.validate().num_inits

    assert [inits(s) for s in ("EL2N", "GradientBased", "Forgetting", "CoreSet", "Random")] == [
        5,
        5,
        1,
        1,
        1,
    ]
    assert inits("el2n", auto=False) == 1 and inits("el2n", given=2) == 2
    assert inits("el2n", strategy="al") == 1  # the released config sets pruning only


# --- end to end on the digits ---------------------------------------------------------------


def _prune(tmp_path, capsys, *flags, name="run"):
    """``vision prune`` without quotas (its default is DRoP's): the scorer's ranking alone."""
    out = str(tmp_path / name)
    code = main(["vision", "prune", "--dataset", "digits", "--epochs", "1", "--quiet",
                 "--quoter", "none", "--out", out, *flags])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f), err


def _query_array(m: dict, key: str) -> np.ndarray:
    (qdir,) = m["iterations"][0]["query_runs"]
    npy = os.path.join(qdir, f"{key}.npy")
    if os.path.isfile(npy):
        return np.load(npy)
    return np.load(os.path.join(qdir, "dynamics.npz"))[key]


@pytest.mark.parametrize(
    "scorer, key",
    [
        ("grand", "grand_full"),
        ("el2n", "final_el2n"),
        ("el2n-early", "el2n"),
        ("grand-early", "grand"),
    ],
)
def test_pruning_keeps_the_hardest_by_the_scorers_array(scorer, key, tmp_path, capsys):
    m, _ = _prune(tmp_path, capsys, "--scorer", scorer, "--final-frac", "0.5")
    s = _query_array(m, key)
    top = set(np.argsort(-s, kind="stable")[: m["n_kept"]].tolist())
    assert set(m["kept_indices"]) == top


def test_cached_query_runs_are_scored_from_their_checkpoint(tmp_path, capsys):
    m, _ = _prune(tmp_path, capsys, "--scorer", "grand", "--final-frac", "0.5")
    (qdir,) = m["iterations"][0]["query_runs"]
    first = np.load(os.path.join(qdir, "grand_full.npy"))
    os.remove(os.path.join(qdir, "grand_full.npy"))
    cache = os.path.dirname(qdir)
    m2, _ = _prune(tmp_path, capsys, "--scorer", "grand", "--final-frac", "0.5",
                   "--query-cache", cache, name="again")  # fmt: skip
    np.testing.assert_allclose(np.load(os.path.join(qdir, "grand_full.npy")), first, rtol=1e-5)
    assert m2["kept_indices"] == m["kept_indices"]


@pytest.mark.parametrize("content", [b"PK\x03\x04truncated zip", b"\x80\x04truncated pickle"])
def test_a_damaged_cached_checkpoint_is_one_error(content, tmp_path):
    from types import SimpleNamespace

    from d2scale.vision.train import load_model

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    data = SimpleNamespace(device=torch.device("cpu"), num_classes=3, in_channels=1, image_size=8)
    with pytest.raises(D2ScaleError, match="cannot read the model in"):
        load_model(str(path), data, "cnn")


def test_auto_config_overridden_is_said_and_recorded(tmp_path, capsys):
    m, err = _prune(tmp_path, capsys, "--auto-config", "--scorer", "el2n", "--num-inits", "2",
                    "--final-frac", "0.5")  # fmt: skip
    warning = "--num-inits 2 overrides --auto-config's 5 for el2n"
    assert f"d2scale: warning: {warning}\n" in err and m["num_inits_warning"] == warning
    assert len(m["iterations"][0]["query_runs"]) == 2


@pytest.mark.parametrize("scorer, key", [("bald", "mc_bald-p3"), ("el2n", "el2n_predicted")])
def test_acquisition_takes_the_most_uncertain_of_the_pool(scorer, key, tmp_path, capsys):
    passes = ("--mc-passes", "3") if scorer == "bald" else ()  # el2n takes none (refused)
    m, _ = _prune(tmp_path, capsys, "--strategy", "al", "--scorer", scorer, "--dropout", "0.3",
                  *passes, "--final-frac", "0.3", "--init-frac", "0.1")  # fmt: skip
    s = _query_array(m, key)
    from d2scale.vision.prune import initial_labelled

    labelled = initial_labelled(1078, 0.1, 0)
    pool = np.setdiff1d(np.arange(1078), labelled)
    new = pool[np.argsort(-s[pool], kind="stable")[: m["n_kept"] - len(labelled)]]
    assert set(m["kept_indices"]) == set(labelled) | set(new.tolist())
    assert m["params"]["dropout"] == 0.3 and m["final_model"]["dropout"] == 0.3
    if scorer == "bald":
        assert (m["mc_dropout"], m["mc_passes"]) == (True, 3)


def test_uncertainty_without_dropout(tmp_path, capsys):
    assert main(["vision", "prune", "--dataset", "digits", "--strategy", "al", "--scorer",
                 "BALD", "--final-frac", "0.3", "--out", str(tmp_path / "x")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("d2scale: error: --scorer bald needs a model with dropout (cnn has none)")
    assert not os.path.exists(tmp_path / "x")  # refused before any training
    m, _ = _prune(tmp_path, capsys, "--strategy", "al", "--scorer", "VariationRatio",
                  "--final-frac", "0.3", "--init-frac", "0.1")  # fmt: skip
    assert (m["scorer"], m["mc_dropout"], m["mc_passes"]) == ("variation_ratio", False, 1)

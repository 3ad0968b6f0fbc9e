"""Every user mistake on the vision commands prints one line and exits 1."""

from __future__ import annotations

import os

import pytest

from d2scale.cli.main import main

# a prune that trains no query model (random scores, no quotas)
PRUNE_WITHOUT_QUERIES = ["prune", "--dataset", "digits", "--final-frac", "0.5", "--quoter", "none"]

CASES = [
    (["train", "--dataset", "digits", "--seed", "-1", "--out", "R"], "in [0, 4294967295], got -1"),
    (["train", "--dataset", "digits", "--epochs", "0", "--out", "R"], "expected an integer ≥ 1"),
    (  # torch takes seeds below 2**63: a larger one was an OverflowError traceback
        ["train", "--dataset", "digits", "--seed", "99999999999999999999999", "--out", "R"],
        "expected an integer in [0, 4294967295]",
    ),
    (["train", "--dataset", "digits", "--threads", "0", "--out", "R"], "expected an integer ≥ 1"),
    (["train", "--dataset", "svhn", "--out", "R"], "invalid choice: 'svhn'"),
    (["train", "--dataset", "digits", "--model", "vit", "--out", "R"], "choose from resnet18"),
    (["train", "--dataset", "digits"], "give --out RUN"),
    (["train", "--dataset", "cifar10", "--out", "R"], "no CIFAR archive in ./data: expected"),
    (
        ["train", "--dataset", "digits", "--data-dir", ".", "--out", "R"],
        "--dataset digits ships with scikit-learn and reads no --data-dir",
    ),
    (["train", "--dataset", "digits", "--lr", "0", "--out", "R"], "--lr must be > 0"),
    (
        ["select", "--run", "R", "--method", "d2", "--fraction", "1.5", "--out", "c.npy"],
        "--fraction must be in (0, 1]",
    ),
    (
        [
            "select",
            "--run",
            "R",
            "--method",
            "d2",
            "--fraction",
            "0.3",
            "--mis-ratio",
            "0.8",
            "--out",
            "c.npy",
        ],
        "--mis-ratio must be in [0, 1 − fraction]",
    ),
    (
        [
            "select",
            "--run",
            "R",
            "--method",
            "d2",
            "--fraction",
            "0.3",
            "--mis-ratio",
            "lots",
            "--out",
            "c.npy",
        ],
        "--mis-ratio must be a number or auto",
    ),
    (
        [
            "select",
            "--run",
            "R",
            "--method",
            "d2",
            "--fraction",
            "0.3",
            "--score",
            "loss",
            "--out",
            "c.npy",
        ],
        "--score must be one of",
    ),
    (
        ["select", "--run", "R", "--fraction", "0.3", "--out", "c.npy"],
        "one of the arguments --method --sampling-mode is required",
    ),
    (
        ["experiment", "--dataset", "digits", "--fractions", "x", "--out", "G"],
        "--fractions must be a comma list of numbers",
    ),
    (["experiment", "--dataset", "digits", "--seeds", "a", "--out", "G"], "--seeds: expected"),
    # a grid cell given twice, or two fractions naming one cell, before any training
    (
        ["experiment", "--dataset", "digits", "--fractions", "0.3,0.3000001", "--out", "G"],
        "--fractions names 0.3 twice",
    ),
    (["experiment", "--dataset", "digits", "--seeds", "0,0", "--out", "G"], "--seeds names 0"),
    (
        ["experiment", "--dataset", "digits", "--methods", "d2,random,d2", "--out", "G"],
        "--methods names d2 twice",
    ),
    (
        [
            "experiment",
            "--dataset",
            "digits",
            "--protocol",
            "drop",
            "--cdbw",
            "on,on",
            "--out",
            "G",
        ],
        "--cdbw names on twice",
    ),  # fmt: skip
    (
        ["experiment", "--dataset", "digits", "--fractions", "0.3,1.5", "--out", "G"],
        "--fractions must be in (0, 1]; got 1.5.",
    ),
    (  # a cell's selection flags, checked before the full-data runs (were checked after)
        [
            "experiment",
            "--dataset",
            "digits",
            "--methods",
            "d2",
            "--fractions",
            "0.3",
            "--mis-ratio",
            "0.8",
            "--out",
            "G",
        ],
        "--mis-ratio must be in [0, 1 − fraction]",
    ),
    (
        [
            "experiment",
            "--dataset",
            "digits",
            "--protocol",
            "drop",
            "--cdbw",
            "maybe",
            "--out",
            "G",
        ],
        "--cdbw takes off, on or off,on",
    ),
    (
        ["experiment", "--dataset", "digits", "--cdbw", "on", "--out", "G"],
        "--cdbw applies to --protocol drop only",
    ),
    (
        ["experiment", "--dataset", "digits", "--num-inits", "3", "--out", "G"],
        "--num-inits applies to --protocol drop only",
    ),
    (
        [
            "experiment",
            "--dataset",
            "digits",
            "--protocol",
            "drop",
            "--iterations",
            "5",
            "--out",
            "G",
        ],
        "--iterations applies to --protocol d2",
    ),
    (
        ["train", "--dataset", "digits", "--iterations", "5", "--out", "R"],
        "--iterations sets the steps of --coreset runs",
    ),
    (
        [
            "quotas",
            "--counts",
            "10,10",
            "--recalls",
            "0.5,0.5",
            "--fraction",
            "0.5",
            "--quoter",
            "uniform",
        ],
        "--recalls is read by --quoter drop only",
    ),
    (
        ["prune", "--dataset", "digits", "--final-frac", "0.3", "--init-frac", "0.1", "--out", "P"],
        "--init-frac applies to --strategy al",
    ),
    (
        ["quotas", "--counts", "1.5,2", "--recalls", "0.5,0.5", "--fraction", "0.5"],
        "--counts: expected an integer ≥ 0",
    ),
    (["quotas", "--counts", "10,10", "--recalls", "0.5", "--fraction", "0.5"], "recalls in"),
    (
        ["quotas", "--counts", "10,10", "--recalls", "0.5,0.5", "--fraction", "0"],
        "--fraction must be in (0, 1]",
    ),
    (
        ["prune", "--dataset", "digits", "--strategy", "2", "--final-frac", "0.5", "--out", "P"],
        "choose dp (or 1) or al (or 0)",
    ),
    (
        ["prune", "--dataset", "digits", "--final-frac", "0", "--out", "P"],
        "--final-frac must be in (0, 1]",
    ),
    (
        [
            "prune",
            "--dataset",
            "digits",
            "--strategy",
            "al",
            "--final-frac",
            "0.3",
            "--init-frac",
            "0.5",
            "--out",
            "P",
        ],
        "--init-frac must be in",
    ),
    (
        [
            "prune",
            "--dataset",
            "digits",
            "--strategy",
            "al",
            "--scorer",
            "forgetting",
            "--final-frac",
            "0.3",
            "--out",
            "P",
        ],
        "--scorer for --strategy al must be one of",
    ),
    (
        ["prune", "--dataset", "digits", "--quoter", "fair", "--final-frac", "0.3", "--out", "P"],
        "invalid choice: 'fair'",
    ),
    # the seeds' spellings
    (["train", "--dataset", "digits", "--device", "cpu", "--use_gpu", "--out", "R"], "not both"),
    (["prune", "--device", "cpu", "--gpuid", "0", "--final_frac", "0.5"], "not both"),
    (
        ["train", "--dataset", "digits", "--coreset-ratio", "0.1", "--out", "R"],
        "--fraction selects a coreset: give it with --coreset and no file.",
    ),
    (
        ["train", "--coreset", "c.npy", "--data-score-path", "s.pickle", "--out", "R"],
        "--data-score-path selects a coreset",
    ),
    (
        ["train", "--dataset", "digits", "--coreset", "--coreset-ratio", "0.1", "--out", "R"],
        "--coreset without a file needs --data-score-path and --feature-path.",
    ),
    (
        [
            "train",
            "--dataset",
            "digits",
            "--coreset",
            "--data-score-path",
            "s.pickle",
            "--feature-path",
            "f.npy",
            "--out",
            "R",
        ],  # fmt: skip
        "--coreset without a file needs --coreset-ratio (or --fraction).",
    ),
    (
        [
            "train",
            "--dataset",
            "digits",
            "--coreset",
            "--data-score-path",
            "s.pickle",
            "--feature-path",
            "f.npy",
            "--coreset-ratio",
            "0.1",
            "--out",
            "R",
        ],  # fmt: skip
        "--data-score-path s.pickle does not exist",
    ),
    (["prune", "--final_frac", "0.5", "--dropout", "1"], "--dropout must be in [0, 1)"),
    (  # random scores without DRoP quotas or an AUM cut train no query model: silently unused
        [*PRUNE_WITHOUT_QUERIES, "--num-inits", "3", "--out", "P"],
        "--num-inits sets the query models, but --scorer random --quoter none trains none",
    ),
    (
        [*PRUNE_WITHOUT_QUERIES, "--cdbw-query", "--out", "P"],
        "--cdbw-query sets the query models",
    ),
    (  # it was read by no scorer of dp: silently unused
        ["prune", "--dataset", "digits", "--final-frac", "0.5", "--mc-passes", "3", "--out", "P"],
        "--mc-passes applies to the MC-dropout scorers of --strategy al",
    ),
    (["scores", "--feature"], "give --run RUN (or the seed's --base-dir and --task-name)."),
    (["scores", "--run", "R"], "R/dynamics.npz is missing"),
]


@pytest.mark.parametrize(("argv", "message"), CASES)
def test_one_line_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["vision", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("d2scale: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not os.listdir(tmp_path)  # refused before anything was written

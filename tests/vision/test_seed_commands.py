"""Every example command of both seeds' READMEs, verbatim (program name aside), on a tiny
CIFAR-10 archive in the seeds' default place (./data).

The commands train for the seeds' full schedules (200 epochs, 40,000 steps, VGG-16's 160
epochs), which a tiny archive makes short. The fast tests also stand in a tiny network for
ResNet-18 / VGG-16 (the one substitution: parsing, data, recipes, epochs, steps, scores,
selection and outputs are the real ones); the slow ones run the 40,000-step coreset command
and one DRoP command with the real VGG-16. Without a GPU, the seeds' GPU requests run on the
CPU with a warning that metrics.json records.
"""

from __future__ import annotations

import json
import os
import re
import shlex

import numpy as np
import pytest
from torch import nn

from d2scale.cli.main import main
from d2scale.vision import models

torch = pytest.importorskip("torch")

# --- the seeds' READMEs, copied as written --------------------------------------------------

D2_VARIABLES = {"N_NEIGHBOR": "5", "GAMMA": "0.1", "CORESET_RATIO": "0.1"}
D2_COMMANDS = [
    "python train.py --dataset cifar10 --gpuid 0 --epochs 200 --lr 0.1 --network resnet18 "
    "--batch-size 256 --task-name all-data --base-dir ./data-model/cifar10",
    "python generate_importance_score.py --gpuid 0 --base-dir ./data-model/cifar10 "
    "--task-name all-data --feature",
    "python train.py --dataset cifar10 --gpuid 1 --iterations 40000 --task-name "
    "class-lb-graph-n=$N_NEIGHBOR-g=$GAMMA-$CORESET_RATIO \\\n"
    "    --base-dir ./data-model/cifar10/class/ --coreset --coreset-mode class "
    "--budget-mode uniform --sampling-mode graph \\\n"
    "    --data-score-path ./data-model/cifar10/all-data/data-score-all-data.pickle \\\n"
    "    --feature-path ./data-model/cifar10/all-data/train-features-all-data.npy \\\n"
    "    --coreset-key forgetting --coreset-ratio $CORESET_RATIO --mis-ratio 0.4 "
    "--label-balanced \\\n"
    "    --n-neighbor $N_NEIGHBOR --gamma $GAMMA --stratas 25 --graph-mode sum "
    "--graph-sampling-mode weighted",
]
DROP_COMMANDS = [
    "python -m drop-data-pruning.main --auto_config --use_gpu --strategy 1 --final_frac 0.7 "
    "--model_name VGG16 --scorer_name EL2N",
    "python -m drop-data-pruning.main --auto_config --use_gpu --strategy 1 --final_frac 0.7 "
    "--model_name VGG16 --scorer_name Random --quoter_name DRoP --num_inits 5",
    "python -m drop-data-pruning.main --auto_config --use_gpu --cdbw_final --strategy 1 "
    "--final_frac 0.7 --model_name VGG16 --scorer_name Random",
]
PROGRAMS = {  # the seed's program → the d2scale command
    ("python", "train.py"): ["vision", "train"],
    ("python", "generate_importance_score.py"): ["vision", "scores"],
    ("python", "-m", "drop-data-pruning.main"): ["vision", "prune"],
}


def d2scale_argv(command: str, variables: dict | None = None) -> list[str]:
    """The seed's command line as the shell splits it, its program replaced by d2scale's."""
    for name, value in (variables or {}).items():
        command = re.sub(rf"\$(?:{name}\b|\{{{name}\}})", value, command)
    words = shlex.split(command.replace("\\\n", " "))
    for program, ours in PROGRAMS.items():
        if tuple(words[: len(program)]) == program:
            return ours + words[len(program) :]
    raise AssertionError(f"unknown program in {command!r}")


# --- fixtures -------------------------------------------------------------------------------


def tiny_net(name, num_classes, in_channels=3, image_size=32, dropout=0.0):
    """The stand-in network: 4×4 average pooling and one linear layer (48-d features)."""
    body = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
    return models.Net(body, nn.Linear(16 * in_channels, num_classes), dropout)


@pytest.fixture
def seed_cwd(tmp_path, monkeypatch, make_cifar):
    """A working directory with the tiny archive at ./data/cifar-10-python.tar.gz: one
    training image per class, two held-out ones (one validation, one test)."""
    os.makedirs(tmp_path / "data")
    make_cifar(str(tmp_path / "data"), per_class=1, test_per_class=2, tarball=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_model(monkeypatch):
    for module in ("d2scale.vision.train", "d2scale.vision.prune"):
        monkeypatch.setattr(f"{module}.build_model", tiny_net)


def _metrics(path) -> dict:
    with open(os.path.join(path, "metrics.json")) as f:
        return json.load(f)


def _check_gpu_request(m: dict, err: str, flag: str) -> None:
    assert m["device_request"] == flag
    device = m["device"] if "device" in m else m["final_model"]["device"]
    if torch.cuda.is_available():
        assert "device_warning" not in m and device.startswith("cuda")
    else:
        warning = f"{flag} asked for a GPU, but torch sees none: running on the CPU"
        assert m["device_warning"] == warning and device == "cpu"
        assert f"d2scale: warning: {warning}\n" in err


def _run(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def _drop_out(argv) -> str:
    """The folder a DRoP command without --out wrote (printed on its last line)."""
    (name,) = os.listdir("drop-runs")
    return os.path.join("drop-runs", name)


# --- the tests ------------------------------------------------------------------------------


def test_the_commands_are_the_seeds_own():
    """The strings above are the seeds' README commands (when the seed files are at hand)."""
    seeds = "/work/shared/seeds"
    if not os.path.isdir(seeds):
        pytest.skip("the seed READMEs are not on this machine")
    text = ""
    for name in sorted(os.listdir(seeds)):
        with open(os.path.join(seeds, name)) as f:
            text += f.read()
    text = text.replace("\\\n", " ").replace("<br/>", "\n").replace("```", "\n")
    found = [line for line in text.splitlines() if line.startswith("python")]
    runnable = [c for c in found if any(c.startswith(" ".join(p) + " ") for p in PROGRAMS)]
    ours = [c.replace("\\\n", " ") for c in D2_COMMANDS + DROP_COMMANDS]
    assert sorted(runnable) == sorted(ours)
    # the rest: the seeds' install steps and the DataComp script (`d2scale select`, not vision)
    rest = {" ".join(c.split()[:3]) for c in found if c not in runnable}
    assert rest == {
        "python3 -m venv",
        "python -m pip",
        "python select_d2_datacomp.py --metadata-dir",
    }


def test_d2_full_data_then_scores_verbatim(seed_cwd, tiny_model, capsys):
    err = _run(d2scale_argv(D2_COMMANDS[0]), capsys)
    run = os.path.join("data-model", "cifar10", "all-data")
    m = _metrics(run)
    assert (m["dataset"], m["model"], m["n_train"], m["epochs"]) == ("cifar10", "resnet18", 10, 200)
    assert (m["recipe"]["lr"], m["recipe"]["batch_size"], m["steps"]) == (0.1, 256, 200)
    _check_gpu_request(m, err, "--gpuid 0")

    err = _run(d2scale_argv(D2_COMMANDS[1]), capsys)
    assert "--gpuid 0 has no effect" in err
    from d2scale.vision.runs import load_run, load_seed_files

    scores, features = load_seed_files(
        os.path.join(run, "data-score-all-data.pickle"),
        os.path.join(run, "train-features-all-data.npy"),
    )
    ours, our_features = load_run(run)
    assert np.array_equal(features, our_features) and scores.keys() == ours.keys()
    assert all(np.array_equal(scores[k], ours[k]) for k in ours)


def test_d2_coreset_command_maps_onto_the_selection(seed_cwd, capsys):
    """The 40,000-step command's flags, parsed as written: the D2 selection it asks for."""
    from d2scale.cli.main import build_parser
    from d2scale.cli.vision import _check_seed_select, _coreset_params

    args = build_parser().parse_args(d2scale_argv(D2_COMMANDS[2], D2_VARIABLES))
    assert args.coreset == "" and args.iterations == 40000 and args.gpuid == 1
    assert args.dataset == "cifar10" and args.task_name == "class-lb-graph-n=5-g=0.1-0.1"
    _check_seed_select(args, True)
    p = _coreset_params(args)
    assert (p.method, p.fraction, p.score, p.mis_ratio, p.coreset_mode) == (
        "d2",
        0.1,
        "forgetting",
        0.4,
        "class",
    )
    assert (p.n_neighbors, p.gamma, p.mode, p.sampling, p.strata) == (5, 0.1, "sum", "weighted", 25)


@pytest.mark.parametrize("i", range(3))
def test_drop_commands_verbatim(i, seed_cwd, tiny_model, capsys):
    err = _run(d2scale_argv(DROP_COMMANDS[i]), capsys)
    m = _metrics(_drop_out(None))
    _check_gpu_request(m, err, "--use_gpu")
    p = m["params"]
    assert (m["strategy"], m["final_frac"], m["n_train"], m["n_kept"]) == ("dp", 0.7, 10, 7)
    assert m["final_model"]["model"] == "vgg16_bn" and m["final_model"]["dataset"] == "cifar10"
    assert m["final_model"]["epochs"] == 194  # VGG-16's 160 epochs by DRoP's rule at 70%
    assert p["auto_config"] is True
    scorer, quoter, inits, cdbw = [("el2n", "none", 5, False), ("random", "drop", 5, False),
                                   ("random", "none", 1, True)][i]  # fmt: skip
    assert (m["scorer"], m["quoter"], p["num_inits"], m["cdbw_final"]) == (
        scorer,
        quoter,
        inits,
        cdbw,
    )
    seed_defaults = {"recall_smoothing": "none"} | ({} if i == 1 else {"quoter": "none"})
    assert m["seed_defaults"] == seed_defaults and p["recall_smoothing"] == "none"
    runs = m["iterations"][0]["query_runs"]
    assert len(runs) == (0 if scorer == "random" and quoter == "none" else inits)
    for q in runs:  # query models: VGG-16's 16 query epochs (10% of 160), unaugmented
        assert _metrics(q)["epochs"] == 16
    if scorer == "el2n":  # the final query models' EL2N (eval mode), averaged over the 5
        kept = np.array(m["kept_indices"])
        mean = np.mean([np.load(os.path.join(q, "dynamics.npz"))["final_el2n"] for q in runs], 0)
        assert set(kept) == set(np.argsort(-mean, kind="stable")[:7])


SEED = {"quoter": "none", "recall_smoothing": "none"}  # the DRoP seed's Auto, measured recall


@pytest.mark.parametrize(
    "flags, quoter, smoothing, applied",
    [
        (["--final_frac", "0.7"], "none", "none", SEED),  # the seed's spelling: its defaults
        (["--final-frac", "0.7"], "drop", "laplace", {}),  # d2scale's: DRoP quotas, Laplace
        (["--final_frac", "0.7", "--quoter_name", "DRoP"], "drop", "none",
         {"recall_smoothing": "none"}),
        (["--final_frac", "0.7", "--recall-smoothing", "laplace"], "none", "laplace",
         {"quoter": "none"}),
        (["--final-frac", "0.7", "--quoter", "uniform"], "uniform", "laplace", {}),
    ],
)  # fmt: skip
def test_the_seeds_spelling_keeps_its_defaults(flags, quoter, smoothing, applied):
    from d2scale.cli.main import build_parser
    from d2scale.cli.vision import _seed_prune_defaults

    args = build_parser().parse_args(["vision", "prune", *flags])
    assert _seed_prune_defaults(args) == applied
    assert (args.quoter, args.recall_smoothing) == (quoter, smoothing)


@pytest.mark.slow
def test_d2_all_three_commands_verbatim(seed_cwd, tiny_model, capsys):
    """The 40,000-step coreset run (a few minutes with the stand-in network)."""
    _run(d2scale_argv(D2_COMMANDS[0]), capsys)
    _run(d2scale_argv(D2_COMMANDS[1]), capsys)
    err = _run(d2scale_argv(D2_COMMANDS[2], D2_VARIABLES), capsys)
    run = os.path.join("data-model", "cifar10", "class", "class-lb-graph-n=5-g=0.1-0.1")
    m = _metrics(run)
    assert (m["steps"], m["n_train"], m["model"]) == (40000, 1, "resnet18")
    _check_gpu_request(m, err, "--gpuid 1")
    with open(os.path.join(run, "coreset.npy.json")) as f:
        info = json.load(f)
    assert info["params"]["method"] == "d2" and len(np.load(os.path.join(run, "coreset.npy"))) == 1


@pytest.mark.slow
def test_a_drop_command_verbatim_with_the_real_vgg16(seed_cwd, capsys):
    """The CDB-W command with the real VGG-16-BN (minutes on a CPU)."""
    err = _run(d2scale_argv(DROP_COMMANDS[2]), capsys)
    m = _metrics(_drop_out(None))
    _check_gpu_request(m, err, "--use_gpu")
    assert (m["n_train"], m["n_kept"], m["final_model"]["model"]) == (10, 7, "vgg16_bn")
    assert m["final_model"]["cdbw"] is True

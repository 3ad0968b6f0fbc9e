"""``d2scale vision``: image-classification training, coreset selection, the experiment grid,
DRoP quotas and pruning. torch is imported inside the command bodies only.

The D2 seed's flag names are accepted as aliases (``--coreset-ratio``, ``--coreset-key``,
``--n-neighbor``, ``--stratas``, ``--graph-mode``, ``--graph-sampling-mode``,
``--sampling-mode``, ``--label-balanced``, ``--budget-mode``, ``--network``), and so are
DRoP's (``--final_frac``, ``--scorer_name``, ``--quoter_name``, ``--num_inits``,
``--cdbw_final``, ``--strategy 0|1``). ``train`` and ``prune`` also take both seeds' GPU
requests (``--use_gpu``, ``--gpuid N``) and default to CIFAR-10 in ``./data``; ``train
--coreset`` without a file selects from the seed's score files first. docs/seeds.md maps
every example command of both seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from d2scale.cli.flags import add_flag, flag_help, int_type
from d2scale.errors import D2ScaleError
from d2scale.params import PARAMS
from d2scale.vision.params import (
    AUTO_NUM_INITS,
    NUM_INITS,
    QUOTERS,
    RECALL_SMOOTHINGS,
    SAMPLING_MODES,
    STRATEGY_ALIASES,
    strategies_text,
)
from d2scale.vision.params import VISION as V
from d2scale.vision.registry import DATASET_MODELS, DEFAULT_MODEL, MODEL_ALIASES, MODELS

EPILOG = "Docs: README.md, section 'Image classification'. Errors print one line, exit 1."
DEFAULT_DATA_DIR = "./data"  # CIFAR archives without --data-dir: ./data (the seeds' default)
SEED_CORESET = ""  # `train --coreset` without a file: select here (the D2 seed's train.py)


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default value (options without one name what applies
    in their own text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.required
            or any(action.default is v for v in (None, False, argparse.SUPPRESS))
            or "(default" in text
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def add_parser(sub, epilog: str = EPILOG) -> None:
    """Add ``vision`` and its subcommands to the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "vision",
        formatter_class=_Help,
        help="image classification: train, select coresets, run grids, DRoP",
        description="Train classifiers with training dynamics, select coresets (random, "
        "top-k, D2, CCS, Moderate, k-center), run the coreset grid, compute DRoP quotas and "
        "run DRoP pruning / active learning.",
        epilog=epilog,
    )
    vsub = p.add_subparsers(dest="vision_command", required=True, metavar="SUBCOMMAND")
    _add_train(vsub)
    _add_select(vsub)
    _add_experiment(vsub)
    _add_quotas(vsub)
    _add_prune(vsub)
    _add_scores(vsub)


# ============================================================================ shared flags


def _data_flags(p: argparse.ArgumentParser, seed_defaults: bool = False) -> None:
    g = p.add_argument_group("data and model")
    dataset = V["dataset"]
    add_flag(g, dataset, "--dataset_name", type=str.lower, required=not seed_defaults,
             **({} if seed_defaults else {"default": None, "help": None}))  # fmt: skip
    g.add_argument(
        "--data-dir",
        "--data_path",
        dest="data_dir",
        help="cifar*: the archive's folder; imagenet: ImageFolder root (train/, val/); "
        "tinyimagenet: tiny-imagenet-200/ or its parent; waterbirds: the folder of "
        f"metadata.csv (docs/vision-data.md) (default: {DEFAULT_DATA_DIR} for cifar*, as the "
        "seeds; digits, mnist5k ship with packages)",
    )
    by_dataset = ", ".join(f"{m} for {' and '.join(d)}" for m, d in _models_by_dataset().items())
    add_flag(
        g,
        V["model"],
        "--network",
        "--model_name",
        type=_model,
        choices=None,
        help=f"{', '.join(MODELS)} (default: {by_dataset}, {DEFAULT_MODEL} otherwise)",
    )


def _models_by_dataset() -> dict[str, list[str]]:
    """{model: [datasets]} of :data:`DATASET_MODELS`, in its order."""
    grouped: dict[str, list[str]] = {}
    for dataset, model in DATASET_MODELS.items():
        grouped.setdefault(model, []).append(dataset)
    return grouped


def _train_flags(p: argparse.ArgumentParser, steps: bool = True, seed_gpu: bool = False) -> None:
    g = p.add_argument_group("training (defaults: the dataset's recipe)")
    add_flag(g, V["epochs"])
    if steps:
        add_flag(g, V["iterations"])
    add_flag(g, V["batch_size"], "--batch_size")
    add_flag(g, V["lr"])
    add_flag(g, V["seed"])
    add_flag(g, V["device"])
    if seed_gpu:
        _seed_gpu_flags(g)
    add_flag(g, V["threads"])
    _progress_flags(p)


def _progress_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("progress")
    add_flag(g, PARAMS["quiet"],
             help="no progress output (warnings about degraded results still print)")  # fmt: skip
    add_flag(g, PARAMS["log_json"], help=flag_help(PARAMS["log_json"]))


def _seed_gpu_flags(g) -> None:
    """The seeds' GPU requests (train, prune: their metrics.json record the outcome)."""
    g.add_argument(
        "--use_gpu",
        "--use-gpu",
        dest="use_gpu",
        action="store_true",
        help="DRoP seed: the GPU if there is one, else the CPU with a warning (recorded)",
    )
    add_flag(g, V["gpuid"])


def _select_flags(
    p: argparse.ArgumentParser, with_method: bool = True, required: bool = True
) -> argparse._ArgumentGroup:
    """The selection flags; ``required``: the method and fraction must be given (``select``;
    ``train``'s seed form checks them itself, see :func:`_check_seed_select`)."""
    g = p.add_argument_group("coreset selection")
    if with_method:
        one = g.add_mutually_exclusive_group(required=required)
        add_flag(one, V["method"])
        add_flag(one, V["sampling_mode"])
        add_flag(g, V["fraction"], "--coreset-ratio", required=required)
        add_flag(g, V["score"], "--coreset-key")
    add_flag(g, V["mis_ratio"])
    add_flag(g, V["coreset_mode"])
    g.add_argument("--label-balanced", action="store_true", help="seed alias: --coreset-mode class")
    add_flag(g, V["budget_mode"])
    add_flag(g, V["n_neighbors"], "--n-neighbor")
    add_flag(g, V["gamma"])
    add_flag(g, V["gamma_forward"])
    add_flag(g, V["mode"], "--graph-mode")
    add_flag(g, V["sampling"], "--graph-sampling-mode")
    add_flag(g, V["strata"], "--stratas")
    return g


def _model(text: str) -> str:
    name = MODEL_ALIASES.get(text, text.lower())
    if name not in MODELS:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(MODELS)}")
    return name


def _select_params(args) -> dict:
    """The CoresetParams keyword arguments shared by select and experiment."""
    mode = "class" if args.label_balanced else args.coreset_mode
    return {
        "mis_ratio": args.mis_ratio,
        "coreset_mode": mode,
        "n_neighbors": args.n_neighbors,
        "gamma": args.gamma,
        "gamma_forward": args.gamma_forward,
        "mode": args.mode,
        "sampling": args.sampling,
        "strata": args.strata,
    }


def _setup(args, family: str):
    """The recipe (checked first), then threads, device and dataset of a command."""
    import torch

    from d2scale.vision.data import load_dataset

    if args.model is None:
        args.model = DATASET_MODELS.get(args.dataset, DEFAULT_MODEL)
    recipe = _recipe(args, family)
    torch.set_num_threads(args.threads)
    device, args.device_record = _device(args)
    if args.data_dir is None and args.dataset in ("cifar10", "cifar100"):
        args.data_dir = DEFAULT_DATA_DIR
    return load_dataset(args.dataset, args.data_dir, device, progress=args.say), recipe


def _device(args):
    """``--device``, or the seeds' ``--use_gpu`` / ``--gpuid N`` (GPU where present, else the
    CPU with a printed warning); also what to record of the request in metrics.json."""
    from d2scale.vision.runs import resolve_device, resolve_seed_gpu

    gpuid = getattr(args, "gpuid", None)
    use_gpu = getattr(args, "use_gpu", False)
    flag = f"--gpuid {gpuid}" if gpuid is not None else "--use_gpu" if use_gpu else None
    if flag is None:
        return resolve_device(args.device), {}
    if args.device != "auto":
        raise D2ScaleError(f"give --device {args.device} or the seed's {flag}, not both.")
    device, warning = resolve_seed_gpu(gpuid or 0, flag)
    record = {"device_request": flag}
    if warning:
        _warn(warning)
        record["device_warning"] = warning
    return device, record


def _warn(text: str) -> None:
    """One warning line on stderr (even with --quiet); callers also record it."""
    print(f"d2scale: warning: {text}", file=sys.stderr)


def _recipe(args, family: str):
    from d2scale.vision.train import recipe_for

    return recipe_for(
        args.dataset,
        args.model,
        family,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        iterations=None if family == "drop" else args.iterations,
    )


def _say(args):
    """The command's progress (closed by the caller): lines, bars and ``--log-json``
    events; a ``warning:`` line prints even with ``--quiet`` (it reports a degraded result)."""
    from d2scale.progress import Progress

    return Progress(args.quiet, log_json=args.log_json)


def _with_progress(run):
    """``run(args)`` with ``args.say`` (see :func:`_say`), closed afterwards."""

    def wrapped(args) -> int:
        args.say = _say(args)
        try:
            return run(args)
        finally:
            args.say.close()

    return wrapped


# ============================================================================ train


def _add_train(vsub) -> None:
    p = vsub.add_parser(
        "train",
        formatter_class=_Help,
        help="train a classifier (full data: log training dynamics and features)",
        description="Full-data runs write RUN/dynamics.npz (forgetting, accumulated_margin, "
        "el2n, entropy, dynamic_uncertainty, grand, targets per training sample), "
        "RUN/features.npy, RUN/checkpoint.pt and RUN/metrics.json. With --coreset the model "
        "trains on those samples for a fixed number of steps (--iterations). Rerunning "
        "resumes from the last epoch checkpoint. The D2 seed's form, --coreset without a "
        "file plus --data-score-path, --feature-path and the selection flags, selects the "
        "coreset first (RUN/coreset.npy).",
        epilog=EPILOG,
    )
    _data_flags(p, seed_defaults=True)
    p.add_argument(
        "--coreset",
        metavar="FILE.npy",
        nargs="?",
        const=SEED_CORESET,
        help="train on these sample ids only; without FILE, select them first (seed form)",
    )
    p.add_argument("--out", metavar="RUN", help="run directory")
    p.add_argument("--base-dir", help="seed form: RUN = BASE_DIR/TASK_NAME")
    p.add_argument("--task-name", help="seed form: RUN = BASE_DIR/TASK_NAME")
    p.add_argument("--data-score-path", metavar="PICKLE", help="seed form: scores to select by")
    p.add_argument("--feature-path", metavar="NPY", help="seed form: features to select by")
    _train_flags(p, seed_gpu=True)
    p.set_defaults(run=_with_progress(_run_train), select_group=_select_flags(p, required=False))


def _run_train(args) -> int:
    from d2scale.vision import runs
    from d2scale.vision.train import train

    out = args.out or (
        os.path.join(args.base_dir, args.task_name) if args.base_dir and args.task_name else None
    )
    if not out:
        raise D2ScaleError("give --out RUN (or the seed's --base-dir and --task-name).")
    seed_select = args.coreset == SEED_CORESET
    _check_seed_select(args, seed_select)
    if args.iterations is not None and args.coreset is None:
        raise D2ScaleError("--iterations sets the steps of --coreset runs; full-data runs "
                           "train --epochs.")  # fmt: skip
    say = args.say
    data, recipe = _setup(args, "d2")
    indices, extra = None, dict(args.device_record)
    if seed_select:
        indices, extra["coreset"] = _seed_coreset(args, out, data.size("train"))
    elif args.coreset:
        indices = runs.load_indices(args.coreset, data.size("train"))
        extra["coreset"] = os.path.abspath(args.coreset)
    else:
        from dataclasses import replace

        recipe = replace(recipe, iterations=None)
    say(
        f"training {args.model} on {args.dataset} ({'full data' if indices is None else 'coreset'})"
    )
    result = train(
        data,
        args.model,
        recipe,
        indices=indices,
        seed=args.seed,
        dynamics=indices is None,
        out=out,
        progress=say,
    )
    m = runs.save_run(out, result, extra)
    _warn_unreadable(data, say)
    say(f"test accuracy {_accuracies(m)} -> {out}")
    return 0


def _check_seed_select(args, seed_select: bool) -> None:
    """Selection flags only go with the seed's bare ``--coreset`` (never quietly unused)."""
    group = args.select_group
    given = [a.option_strings[0] for a in group._group_actions
             if getattr(args, a.dest) != a.default]  # fmt: skip
    if seed_select:
        if not (args.data_score_path and args.feature_path):
            raise D2ScaleError(
                "--coreset without a file needs --data-score-path and --feature-path."
            )
        if args.fraction is None:
            raise D2ScaleError("--coreset without a file needs --coreset-ratio (or --fraction).")
    elif given or args.data_score_path or args.feature_path:
        flag = given[0] if given else "--data-score-path"
        raise D2ScaleError(f"{flag} selects a coreset: give it with --coreset and no file.")


def _seed_coreset(args, out: str, n: int):
    """Select the coreset from the seed's score files; (sorted ids, RUN/coreset.npy)."""
    from d2scale.io import save_json, save_npy
    from d2scale.vision.coresets import select_coreset
    from d2scale.vision.runs import load_seed_files

    scores, features = load_seed_files(args.data_score_path, args.feature_path)
    if len(scores["targets"]) != n:
        raise D2ScaleError(f"{args.data_score_path} scores {len(scores['targets'])} samples; "
                           f"--dataset {args.dataset} has {n}.")  # fmt: skip
    coreset = select_coreset(_coreset_params(args), scores, features)
    path = os.path.join(out, "coreset.npy")
    save_npy(path, coreset.indices)
    save_json(path + ".json", {**coreset.info, "scores": os.path.abspath(args.data_score_path)})
    return coreset.indices, os.path.abspath(path)


def _coreset_params(args):
    """CoresetParams of ``select`` (and the seed form of ``train``), validated."""
    from d2scale.vision.coresets import CoresetParams

    method = args.method or SAMPLING_MODES.get(args.sampling_mode or "")
    if method is None:
        raise D2ScaleError("give --method (or the seed's --sampling-mode).")
    params = CoresetParams(
        method=method,
        fraction=args.fraction,
        score=args.score,
        seed=args.seed,
        **_select_params(args),
    )
    return params.validate()


def _accuracies(m: dict) -> str:
    """``"97.10% (worst class 91.00%, worst group 80.00%)"`` from run metrics."""
    worst = f"worst class {100 * m['worst_class_accuracy']:.2f}%"
    if "worst_group_accuracy" in m:
        worst += f", worst group {100 * m['worst_group_accuracy']:.2f}%"
    return f"{100 * m['test_accuracy']:.2f}% ({worst})"


def _warn_unreadable(data, say) -> None:
    from d2scale.vision.train import unreadable_warning

    warning = unreadable_warning(data)
    if warning:
        say(warning)


# ============================================================================ select


def _add_select(vsub) -> None:
    p = vsub.add_parser(
        "select",
        formatter_class=_Help,
        help="pick a coreset from a full-data run",
        description="Writes the sorted int64 sample ids of the coreset to --out (.npy) and "
        "how they were chosen to --out with .json appended.",
        epilog=EPILOG,
    )
    p.add_argument(
        "--run", dest="run_dir", required=True, metavar="RUN", help="full-data run directory"
    )
    p.add_argument("--out", required=True, metavar="FILE.npy")
    add_flag(p, V["seed"], help="random, ccs: the draw")
    _progress_flags(p)
    _select_flags(p)
    p.set_defaults(run=_with_progress(_run_select))


D2_FLAGS = ("n_neighbors", "gamma", "gamma_forward", "mode", "sampling")  # read by d2 only


def _unread_flags(args, methods: str | list[str], by: str | None = None) -> list[str]:
    """A warning per selection flag set away from its default that no method of ``methods``
    reads (``--method random --gamma 0.5``): it changed nothing. ``by`` says who does not read
    it (default ``--method METHOD does not read it``); flags the command lacks are skipped."""
    from d2scale.vision.registry import CORESET_METHODS

    methods = [methods] if isinstance(methods, str) else methods
    reads = {"score": any(CORESET_METHODS[m].reads_score for m in methods),
             "strata": "ccs" in methods}  # fmt: skip
    reads |= {name: "d2" in methods for name in D2_FLAGS}
    return [
        f"warning: {V[name].flag} {getattr(args, name)} changes nothing: "
        f"{by or f'--method {methods[0]} does not read it'}"
        for name, read in reads.items()
        if hasattr(args, name) and not read and getattr(args, name) != V[name].default
    ]


def _run_select(args) -> int:
    from d2scale.io import save_json, save_npy
    from d2scale.vision.coresets import select_coreset
    from d2scale.vision.runs import check_not_a_run_file, load_run

    params = _coreset_params(args)
    method = params.method
    check_not_a_run_file([args.out, args.out + ".json"], args.run_dir)
    scores, features = load_run(args.run_dir)
    coreset = select_coreset(params, scores, features, progress=args.say)
    warnings = [*_unread_flags(args, method), *coreset.info.get("warnings", [])]
    save_npy(args.out, coreset.indices)
    record = {**coreset.info, "run": os.path.abspath(args.run_dir)}
    save_json(args.out + ".json", {**record, "warnings": warnings} if warnings else record)
    for warning in warnings:
        args.say(warning)
    args.say(
        f"{method}: kept {len(coreset.indices):,} of {coreset.info['n']:,} samples in "
        f"{coreset.info['seconds']:.2f}s -> {args.out}"
    )
    return 0


# ============================================================================ experiment


def _add_experiment(vsub) -> None:
    p = vsub.add_parser(
        "experiment",
        formatter_class=_Help,
        help="a grid of methods × fractions × seeds (coreset or DRoP protocol)",
        description="--protocol d2: per seed one full-data run, then select + train every "
        "(method, fraction) cell. --protocol drop: per seed a full-data reference model, "
        "then a DRoP prune run per (scorer[+quoter], CDB-W, fraction). Writes "
        "OUT/results.json, results.md (mean ± std) and accuracy.png; finished cells are "
        "skipped on a rerun.",
        epilog=EPILOG,
    )
    _data_flags(p)
    add_flag(p, V["protocol"])
    p.add_argument(
        "--methods",
        help="d2: comma list, topk-<score> picks the score (default: "
        f"{D2_METHODS}); drop: <scorer>[{_quota_suffixes()}] (default: {DROP_METHODS})",
    )
    shown = "; ".join(f"{k} {v}" for k, v in FRACTIONS.items())
    p.add_argument("--fractions", help=f"fractions kept (default: {shown})")
    add_flag(p, V["seeds"], help="default: %(default)s")
    p.add_argument("--cdbw", help=f"drop: {_one_or_all(CDBW)} (default: {DROP_ONLY['cdbw']})")
    none, *others = RECALL_SMOOTHINGS
    p.add_argument(
        "--recall-smoothing",
        help=f"drop: {none} (published), {', '.join(others)} or {','.join(RECALL_SMOOTHINGS)} "
        f"(cells with DRoP quotas or CDB-W; see vision prune) (default: "
        f"{DROP_ONLY['recall_smoothing']})",
    )
    add_flag(
        p,
        V["num_inits"],
        "--num_inits",
        help=f"drop: query models per selection (default: {DROP_ONLY['num_inits']})",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    _train_flags(p)
    _select_flags(p, with_method=False)
    p.set_defaults(run=_with_progress(_run_experiment))


FRACTIONS = {"d2": "0.1,0.3,0.5", "drop": "0.3,0.5"}  # of experiment, by --protocol
CDBW = ("off", "on")  # experiment --cdbw: the grid's CDB-W settings
D2_METHODS = "random,topk-forgetting,d2,ccs,moderate,kcenter"
DROP_METHODS = "random,random+drop,el2n,el2n+drop,d2,d2+drop"
# drop-only flags of experiment: None unless given (then refused under d2), else these
DROP_ONLY = {"cdbw": "off", "recall_smoothing": V["recall_smoothing"].default,
             "num_inits": NUM_INITS}  # fmt: skip


def _protocol_flags(args, drop: bool) -> None:
    """Refuse flags the chosen protocol would ignore; fill the drop-only defaults."""
    if not drop:
        given = [k for k in DROP_ONLY if getattr(args, k) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise D2ScaleError(f"{flag} applies to --protocol drop only.")
        return
    if args.iterations is not None:
        raise D2ScaleError(
            "--iterations applies to --protocol d2 (drop runs train DRoP's epoch rule)."
        )
    for k, v in DROP_ONLY.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def _run_experiment(args) -> int:
    from d2scale.vision import experiment as ex
    from d2scale.vision.registry import SCORERS

    drop = args.protocol == "drop"
    _protocol_flags(args, drop)
    fractions = _floats(args.fractions or FRACTIONS[args.protocol], "--fractions")
    try:
        seeds = [int_type(V["seed"])(s) for s in _items(args.seeds, "--seeds")]
    except argparse.ArgumentTypeError as e:
        raise D2ScaleError(f"--seeds: {e}.") from None
    grid = dict(fractions=fractions, seeds=seeds, out=args.out, select_params=_select_params(args))
    if drop:
        grid["methods"] = ex.parse_drop_methods(args.methods or DROP_METHODS)
        grid["cdbw"] = [_on_off(v) for v in _items(args.cdbw, "--cdbw")]
        grid["num_inits"] = args.num_inits
        grid["smoothings"] = _items(args.recall_smoothing, "--recall-smoothing")
        if not set(grid["smoothings"]) <= set(RECALL_SMOOTHINGS):
            raise D2ScaleError(f"--recall-smoothing takes {_one_or_all(RECALL_SMOOTHINGS)}.")
    else:
        grid["methods"] = ex.parse_methods(args.methods or D2_METHODS)
    say = args.say
    names = [SCORERS[s][0] for s, _ in grid["methods"]] if drop else [
        m.name for m in grid["methods"]]  # fmt: skip
    grid["ignored_flags"] = _unread_flags(args, names, "no method of --methods reads it")
    for warning in grid["ignored_flags"]:
        say(warning)
    data, recipe = _setup(args, args.protocol)
    runner = ex.run_drop_experiment if drop else ex.run_experiment
    records = runner(data, args.model, recipe, progress=say, bars=True, **grid)
    _warn_unreadable(data, say)
    warned = sum(bool(r["warnings"]) for r in records)
    note = f" ({warned} with warnings, listed there)" if warned else ""
    say(f"{len(records)} records{note} -> {os.path.join(args.out, 'results.md')}")
    if not args.quiet:
        with open(os.path.join(args.out, "results.md")) as f:
            print(f.read())
    return 0


def _on_off(text: str) -> bool:
    if text not in CDBW:
        raise D2ScaleError(f"--cdbw takes {_one_or_all(CDBW)}; got {text!r}.")
    return text == CDBW[1]


def _one_or_all(choices) -> str:
    """``off, on or off,on``: each value, or all of them comma-separated."""
    return f"{', '.join(choices[:-1])}, {choices[-1]} or {','.join(choices)}"


def _quota_suffixes() -> str:
    """``+uniform|+drop``: the quoters a DRoP grid method may name (none is the default)."""
    return "|".join(f"+{q}" for q in QUOTERS if q != "none")


def _items(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise D2ScaleError(f"{flag} lists nothing.")
    return items


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(t) for t in _items(text, flag)]
    except ValueError:
        raise D2ScaleError(f"{flag} must be a comma list of numbers; got {text!r}.") from None


# ============================================================================ quotas


def _add_quotas(vsub) -> None:
    p = vsub.add_parser(
        "quotas",
        formatter_class=_Help,
        help="per-class DRoP quotas from class sizes and validation recalls",
        description="Prints {quotas, budget, densities, ...} as JSON.",
        epilog=EPILOG,
    )
    add_flag(p, V["counts"], required=True)
    p.add_argument(
        "--recalls", help="per-class validation recall in [0, 1], comma list (needed by drop)"
    )
    add_flag(p, V["fraction"], required=True, help=f"fraction kept, {V['fraction'].range_text()}")
    add_flag(
        p,
        V["quoter"],
        "--quoter_name",
        type=str.lower,
        help="drop: density ∝ validation error; uniform: the same density in every class",
    )
    add_flag(p, V["seed"], help="fills the rounding leftovers")
    p.set_defaults(run=_run_quotas)


def _run_quotas(args) -> int:
    from d2scale.vision.quotas import quotas_report

    try:
        counts = [int_type(V["class_size"])(v) for v in _items(args.counts, "--counts")]
    except argparse.ArgumentTypeError as e:
        raise D2ScaleError(f"--counts: {e}.") from None
    if args.recalls and args.quoter != "drop":
        raise D2ScaleError(f"--recalls is read by --quoter drop only, not {args.quoter}.")
    recalls = _floats(args.recalls, "--recalls") if args.recalls else None
    report = quotas_report(counts, recalls, args.fraction, args.quoter, seed=args.seed)
    # one key per line, lists inline: easy to read and still JSON
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in report.items()]
    print("{\n" + ",\n".join(lines) + "\n}")
    for warning in report.get("warnings", []):  # also in the JSON
        print(f"d2scale: {warning}", file=sys.stderr)
    return 0


# ============================================================================ prune (DRoP)


# DRoP seed: the defaults of a command in its spelling where d2scale's differ
# (d2scale.vision.defaults says why d2scale's own are DRoP quotas with Laplace recall)
SEED_SPELLING = "--final_frac"  # its one required flag, as its README spells it
SEED_PRUNE_DEFAULTS = {"quoter": "none", "recall_smoothing": "none"}
_SEED_PRUNE_PARAMS = (V["prune_quoter"], V["recall_smoothing"])  # d2scale's own of those


class _Spelled(argparse.Action):
    """Stores the value and the spelling that gave it (``args.spelled``: dest → option)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.spelled = {
            **(getattr(namespace, "spelled", None) or {}),
            self.dest: option_string,
        }


def _seed_prune_defaults(args) -> dict:
    """A prune command in the DRoP seed's spelling keeps the seed's meaning: its quoter Auto
    (none) and measured recall, where the command does not name them; what was applied."""
    spelled = getattr(args, "spelled", None) or {}
    if spelled.get("final_frac") != SEED_SPELLING:
        return {}
    applied = {k: v for k, v in SEED_PRUNE_DEFAULTS.items() if k not in spelled}
    for k, v in applied.items():
        setattr(args, k, v)
    return applied


def _add_prune(vsub) -> None:
    p = vsub.add_parser(
        "prune",
        formatter_class=_Help,
        help="DRoP: query models → quotas → prune (dp) or acquire (al) → final model",
        description="The DRoP workflow: train --num-inits query models on the current data, "
        "score samples and take per-class validation recall at the best epoch, set class "
        "quotas, remove (dp) or acquire (al) samples within them, repeat for --iterations, "
        "then train the final model (CDB-W with --cdbw-final) and write OUT/metrics.json.",
        epilog=EPILOG,
    )
    _data_flags(p, seed_defaults=True)
    add_flag(p, V["strategy"], type=_strategy, choices=None)
    add_flag(p, V["final_frac"], SEED_SPELLING, required=True, action=_Spelled,
             help=f"{V['final_frac'].help}; spelled {SEED_SPELLING}, the command keeps the DRoP "
             "seed's defaults (see --quoter)")  # fmt: skip
    p.add_argument(
        "--init-frac",
        "--init_frac",
        "--start_frac",
        dest="init_frac",
        type=float,
        help="al: the seeded initial labelled fraction (default final/(iterations+1))",
    )
    add_flag(p, V["scorer"], "--scorer_name", type=str.lower)  # fmt: skip
    add_flag(p, V["prune_quoter"], "--quoter_name", type=str.lower, action=_Spelled,
             help="per-class quotas: drop (DRoP: density ∝ validation error), uniform, or none "
             "(the seed's Auto, its default): the scorer alone. A command in the seed's "
             f"spelling ({SEED_SPELLING}) without this flag keeps the seed's none, and its "
             "measured recall without --recall-smoothing (said and recorded)")  # fmt: skip
    add_flag(p, V["num_inits"], "--num_inits", help="query models per selection (default: "
             f"--auto-config's, else {NUM_INITS})")  # fmt: skip
    add_flag(p, V["prune_iterations"])
    p.add_argument("--cdbw-final", "--cdbw_final", dest="cdbw_final", action="store_true")
    p.add_argument("--cdbw-query", "--cdbw_query", dest="cdbw_query", action="store_true")
    auto = {n: [s for s, v in AUTO_NUM_INITS.items() if v == n] for n in AUTO_NUM_INITS.values()}
    p.add_argument(
        "--auto-config",
        "--auto_config",
        dest="auto_config",
        action="store_true",
        help="DRoP's released configuration: --num-inits "
        + ", ".join(f"{n} for {_and(scorers)}" for n, scorers in auto.items())
        + " (pruning); recipes are always filled per dataset/model",
    )
    add_flag(p, V["dropout"])
    add_flag(p, V["mc_passes"], "--bald_k")
    add_flag(p, V["query_epochs"])
    add_flag(p, V["recall_smoothing"], action=_Spelled,
             help="validation recall for quotas and CDB-W: laplace (hits + 1) / (n + 2), or "
             "none: as measured (published), which gives a class measured at recall 1.0 no "
             "samples")  # fmt: skip
    p.add_argument(
        "--query-cache", metavar="DIR", help="reuse query models across runs (default: OUT/query)"
    )
    p.add_argument(
        "--out", metavar="DIR", help="default: drop-runs/<dataset>-<model>-<settings>-<hash>"
    )
    _train_flags(p, steps=False, seed_gpu=True)
    _select_flags(p, with_method=False)
    p.set_defaults(run=_with_progress(_run_prune))


def _strategy(text: str) -> str:
    value = STRATEGY_ALIASES.get(text, text.lower())
    if value not in V["strategy"].choices:
        raise argparse.ArgumentTypeError(f"choose {' or '.join(strategies_text())}")
    return value


def _and(items: list[str]) -> str:
    """``a, b and c``."""
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def _run_prune(args) -> int:
    from d2scale.vision.prune import (
        PruneParams,
        auto_num_inits,
        refuse_unread_query_flags,
        run_prune,
    )
    from d2scale.vision.registry import SCORERS

    seed_defaults = _seed_prune_defaults(args)
    params = PruneParams(
        strategy=args.strategy,
        final_frac=args.final_frac,
        init_frac=args.init_frac,
        scorer=args.scorer,
        quoter=args.quoter,
        num_inits=args.num_inits,
        iterations=args.iterations,
        cdbw_final=args.cdbw_final,
        cdbw_query=args.cdbw_query,
        query_epochs=args.query_epochs,
        recall_smoothing=args.recall_smoothing,
        seed=args.seed,
        select=_select_params(args),
        auto_config=args.auto_config,
        dropout=args.dropout,
        mc_passes=args.mc_passes,
    ).validate()
    query_flags = {"--num-inits": args.num_inits, "--query-epochs": args.query_epochs,
                   "--cdbw-query": args.cdbw_query or None}  # fmt: skip
    refuse_unread_query_flags(params, [f for f, v in query_flags.items() if v is not None])
    say = args.say
    data, recipe = _setup(args, "drop")
    if seed_defaults:
        flags = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in seed_defaults.items())
        own = ", ".join(f"{p.flag} {p.default}" for p in _SEED_PRUNE_PARAMS)
        say(f"the DRoP seed's spelling ({SEED_SPELLING}): its defaults {flags} (d2scale's: {own})")
    extra = {**args.device_record, **({"seed_defaults": seed_defaults} if seed_defaults else {})}
    unread = _unread_flags(
        args, SCORERS[params.scorer][0], f"--scorer {params.scorer} does not read it"
    )
    for warning in unread:
        say(warning)
    if unread:
        extra["ignored_flags"] = unread
    auto = auto_num_inits(params) if args.auto_config else None
    if auto is not None and params.num_inits != auto:
        extra["num_inits_warning"] = (
            f"--num-inits {params.num_inits} overrides --auto-config's {auto} for {params.scorer}"
        )
        _warn(extra["num_inits_warning"])
    out = args.out or _default_out(args, params, recipe)
    metrics = run_prune(
        data,
        args.model,
        recipe,
        params,
        out,
        progress=say,
        bars=True,
        query_cache=args.query_cache,
        extra=extra,
    )
    _warn_unreadable(data, say)
    say(f"average test accuracy {_accuracies(metrics)} -> {out}/metrics.json")
    return 0


def _default_out(args, params, recipe) -> str:
    """``drop-runs/<dataset>-<model>-<strategy>-<scorer>[-<quoter>]-<final_frac>-<hash>``, the
    hash over every setting, so runs with other settings never share a folder (the seed names
    its result files by its settings too)."""
    from dataclasses import asdict

    facts = [args.dataset, os.path.abspath(args.data_dir or ""), args.model, asdict(recipe),
             vars(params)]  # fmt: skip
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()
    quoter = "" if params.quoter == "none" else f"-{params.quoter}"
    name = f"{args.dataset}-{args.model}-{params.strategy}-{params.scorer}{quoter}"
    return os.path.join("drop-runs", f"{name}-{params.final_frac:g}-{digest[:8]}")


# ============================================================================ scores (D2 seed)


def _add_scores(vsub) -> None:
    p = vsub.add_parser(
        "scores",
        formatter_class=_Help,
        help="a full-data run's scores and features as the D2 seed's files",
        description="The D2 seed's generate_importance_score.py: writes RUN/data-score-TASK."
        "pickle (a dict of numpy arrays: every training-dynamics score and targets) and, with "
        "--feature, RUN/train-features-TASK.npy, for `train --coreset --data-score-path … "
        "--feature-path …`. RUN = BASE_DIR/TASK_NAME (or --run). Nothing is recomputed: "
        "`train` logged the scores and features.",
        epilog=EPILOG,
    )
    p.add_argument("--run", dest="run_dir", metavar="RUN", help="full-data run directory")
    p.add_argument("--base-dir", help="seed form: RUN = BASE_DIR/TASK_NAME")
    p.add_argument("--task-name", help="seed form: RUN = BASE_DIR/TASK_NAME")
    p.add_argument("--feature", action="store_true", help="also write the features")
    add_flag(
        p, V["gpuid"], help="accepted for the seed; nothing runs on a device here (a note says so)"
    )
    _progress_flags(p)
    p.set_defaults(run=_with_progress(_run_scores))


def _run_scores(args) -> int:
    from d2scale.vision.runs import write_seed_files

    run_dir = args.run_dir or (
        os.path.join(args.base_dir, args.task_name) if args.base_dir and args.task_name else None
    )
    if not run_dir:
        raise D2ScaleError("give --run RUN (or the seed's --base-dir and --task-name).")
    task = args.task_name or os.path.basename(os.path.normpath(run_dir))
    if args.gpuid is not None:
        print(
            f"d2scale: note: --gpuid {args.gpuid} has no effect: the scores and features were "
            "logged by `vision train` and are only written out here",
            file=sys.stderr,
        )
    paths = write_seed_files(run_dir, run_dir, task, args.feature)
    args.say(f"wrote {', '.join(paths)}")
    return 0

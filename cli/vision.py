"""``d2scale vision``: image-classification training, coreset selection, the experiment grid,
DRoP quotas and pruning. torch is imported inside the command bodies only.

The D2 seed's flag names are accepted as aliases (``--coreset-ratio``, ``--coreset-key``,
``--n-neighbor``, ``--stratas``, ``--graph-mode``, ``--graph-sampling-mode``,
``--sampling-mode``, ``--label-balanced``, ``--budget-mode``, ``--network``), and so are
DRoP's (``--final_frac``, ``--scorer_name``, ``--quoter_name``, ``--num_inits``,
``--cdbw_final``, ``--strategy 0|1``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from d2scale.errors import D2ScaleError
from d2scale.vision.defaults import DEFAULT_QUOTER, DEFAULT_RECALL_SMOOTHING, DEFAULT_THREADS

EPILOG = "Docs: README.md, section 'Image classification'. Errors print one line, exit 1."
DATASETS = ("cifar10", "cifar100", "imagenet", "tinyimagenet", "waterbirds", "digits", "mnist5k")
MODELS = ("resnet18", "resnet34", "resnet50", "vgg16_bn", "vgg19_bn", "cnn")
MODEL_ALIASES = {
    "vgg16": "vgg16_bn",
    "VGG16": "vgg16_bn",
    "vgg19": "vgg19_bn",
    "VGG19": "vgg19_bn",
    "ResNet18": "resnet18",
    "ResNet34": "resnet34",
    "ResNet50": "resnet50",
}
SAMPLING_MODES = {
    "graph": "d2",
    "stratified": "ccs",
    "random": "random",
    "kcenter": "kcenter",
    "moderate": "moderate",
    "topk": "topk",
}


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


# ============================================================================ shared flags


def _data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--dataset",
        "--dataset_name",
        dest="dataset",
        type=str.lower,
        required=True,
        choices=DATASETS,
    )
    g.add_argument(
        "--data-dir",
        help="cifar*: the archive's folder; imagenet: ImageFolder root (train/, val/); "
        "tinyimagenet: tiny-imagenet-200/ or its parent; waterbirds: the folder of "
        "metadata.csv (docs/vision-data.md) (default: none; digits, mnist5k ship with packages)",
    )
    g.add_argument(
        "--model",
        "--network",
        "--model_name",
        dest="model",
        type=_model,
        help=f"{', '.join(MODELS)} (default: cnn for digits and mnist5k, "
        "resnet50 for imagenet, resnet18 otherwise)",
    )


def _train_flags(p: argparse.ArgumentParser, steps: bool = True) -> None:
    g = p.add_argument_group("training (defaults: the dataset's recipe)")
    g.add_argument("--epochs", type=_pos_int, help="full-data epochs (default: the recipe's)")
    if steps:
        g.add_argument(
            "--iterations",
            type=_pos_int,
            help="SGD steps of coreset runs (default: the recipe's; CIFAR 40000)",
        )
    g.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=_pos_int,
        help="samples per SGD step (default: the recipe's)",
    )
    g.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="every random choice")
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when torch sees a GPU, else the CPU",
    )
    g.add_argument(
        "--threads",
        type=_pos_int,
        default=DEFAULT_THREADS,
        help="torch CPU threads. These models are small per sample, so one thread is the "
        "fastest on a small or shared CPU (digits on the loaded 2-core dev machine: several "
        "times faster than torch's default of one per core); raise it for large models on "
        "many free cores. The count "
        "changes float summation order, so results differ slightly; metrics.json records it",
    )
    _progress_flags(p)


def _progress_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("progress")
    g.add_argument(
        "--quiet",
        action="store_true",
        help="no progress output (warnings about degraded results still print)",
    )
    g.add_argument(
        "--log-json",
        metavar="FILE",
        help="append one JSON object per progress event to FILE ('-': to stderr, instead of "
        "the progress lines) (default: none)",
    )


def _select_flags(p: argparse.ArgumentParser, with_method: bool = True) -> None:
    g = p.add_argument_group("coreset selection")
    if with_method:
        one = g.add_mutually_exclusive_group(required=True)
        one.add_argument(
            "--method",
            choices=("random", "topk", "d2", "ccs", "moderate", "kcenter"),
            help="required (or the seed's --sampling-mode)",
        )
        one.add_argument(
            "--sampling-mode",
            choices=tuple(SAMPLING_MODES),
            help="seed alias of --method (graph = d2, stratified = ccs)",
        )
        g.add_argument(
            "--fraction",
            "--coreset-ratio",
            dest="fraction",
            type=float,
            required=True,
            help="fraction of the training set kept, in (0, 1]",
        )
        g.add_argument(
            "--score",
            "--coreset-key",
            dest="score",
            default="forgetting",
            help="training-dynamics score (forgetting, accumulated_margin/aum, el2n, "
            "entropy, dynamic_uncertainty/dynunc, grand)",
        )
    g.add_argument(
        "--mis-ratio",
        default="auto",
        help="share of samples removed first by lowest AUM (auto: d2/ccs 0.1 from "
        "20%% kept, 0.4 below, 0 at ≥ 50%%; other methods 0)",
    )
    g.add_argument(
        "--coreset-mode",
        choices=("class", "global"),
        help="pick per class (default for d2, kcenter) or over all samples",
    )
    g.add_argument("--label-balanced", action="store_true", help="seed alias: --coreset-mode class")
    g.add_argument(
        "--budget-mode",
        choices=("uniform",),
        default="uniform",
        help="class budgets: small classes whole, the rest even (seed's uniform)",
    )
    g.add_argument(
        "--n-neighbors",
        "--n-neighbor",
        dest="n_neighbors",
        type=_pos_int,
        default=5,
        help="D2: k of each class's kNN graph",
    )
    g.add_argument("--gamma", type=float, default=0.1, help="D2 reverse kernel width γr")
    g.add_argument("--gamma-forward", type=float, default=1.0, help="D2 forward kernel width")
    g.add_argument(
        "--mode",
        "--graph-mode",
        dest="mode",
        choices=("sum", "product"),
        default="sum",
        help="D2 forward message combination",
    )
    g.add_argument(
        "--sampling",
        "--graph-sampling-mode",
        dest="sampling",
        choices=("weighted", "absolute"),
        default="weighted",
        help="D2 reverse update",
    )
    g.add_argument(
        "--strata", "--stratas", dest="strata", type=_pos_int, default=50, help="CCS score strata"
    )


def _pos_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {value}")
    return value


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
    from d2scale.vision.runs import resolve_device

    if args.model is None:
        args.model = {"digits": "cnn", "mnist5k": "cnn", "imagenet": "resnet50"}.get(
            args.dataset, "resnet18"
        )
    recipe = _recipe(args, family)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    return load_dataset(args.dataset, args.data_dir, device, progress=args.say), recipe


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

    progress = Progress(args.quiet, log_json=args.log_json)
    loud = args.quiet and args.log_json != "-"

    def say(message: str) -> None:
        if loud and message.startswith("warning:"):
            print(f"d2scale: {message}", file=sys.stderr, flush=True)
        progress(message)

    say.close = progress.close
    return say


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
        "resumes from the last epoch checkpoint.",
        epilog=EPILOG,
    )
    _data_flags(p)
    p.add_argument("--coreset", metavar="FILE.npy", help="train on these sample ids only")
    p.add_argument("--out", metavar="RUN", help="run directory")
    p.add_argument("--base-dir", help="seed form: RUN = BASE_DIR/TASK_NAME")
    p.add_argument("--task-name", help="seed form: RUN = BASE_DIR/TASK_NAME")
    _train_flags(p)
    p.set_defaults(run=_with_progress(_run_train))


def _run_train(args) -> int:
    from d2scale.vision import runs
    from d2scale.vision.train import train

    out = args.out or (
        os.path.join(args.base_dir, args.task_name) if args.base_dir and args.task_name else None
    )
    if not out:
        raise D2ScaleError("give --out RUN (or the seed's --base-dir and --task-name).")
    if args.iterations is not None and not args.coreset:
        raise D2ScaleError("--iterations sets the steps of --coreset runs; full-data runs "
                           "train --epochs.")  # fmt: skip
    say = args.say
    data, recipe = _setup(args, "d2")
    indices = None
    if args.coreset:
        indices = runs.load_indices(args.coreset, data.size("train"))
    else:
        from dataclasses import replace

        recipe = replace(recipe, iterations=None)
    say(f"training {args.model} on {args.dataset} ({'coreset' if args.coreset else 'full data'})")
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
    extra = {"coreset": os.path.abspath(args.coreset)} if args.coreset else {}
    m = runs.save_run(out, result, extra)
    _warn_unreadable(data, say)
    say(f"test accuracy {_accuracies(m)} -> {out}")
    return 0


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
    p.add_argument("--seed", type=_nonneg_int, default=0, help="random, ccs: the draw")
    _progress_flags(p)
    _select_flags(p)
    p.set_defaults(run=_with_progress(_run_select))


def _run_select(args) -> int:
    from d2scale.io import save_json, save_npy
    from d2scale.vision.coresets import CoresetParams, select_coreset
    from d2scale.vision.runs import load_run

    method = args.method or SAMPLING_MODES[args.sampling_mode]
    params = CoresetParams(
        method=method,
        fraction=args.fraction,
        score=args.score,
        seed=args.seed,
        **_select_params(args),
    )
    params.validate()
    scores, features = load_run(args.run_dir)
    coreset = select_coreset(params, scores, features, progress=args.say)
    save_npy(args.out, coreset.indices)
    save_json(args.out + ".json", {**coreset.info, "run": os.path.abspath(args.run_dir)})
    for warning in coreset.info.get("warnings", []):
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
    p.add_argument("--protocol", choices=("d2", "drop"), default="d2")
    p.add_argument(
        "--methods",
        help="d2: comma list, topk-<score> picks the score (default: "
        f"{D2_METHODS}); drop: <scorer>[+uniform|+drop] (default: {DROP_METHODS})",
    )
    p.add_argument("--fractions", help="fractions kept (default: d2 0.1,0.3,0.5; drop 0.3,0.5)")
    p.add_argument("--seeds", default="0,1,2", help="default: %(default)s")
    p.add_argument("--cdbw", help=f"drop: off, on or off,on (default: {DROP_ONLY['cdbw']})")
    p.add_argument(
        "--recall-smoothing",
        help="drop: none (published), laplace or none,laplace (cells with DRoP quotas or "
        f"CDB-W; see vision prune) (default: {DROP_ONLY['recall_smoothing']})",
    )
    p.add_argument(
        "--num-inits",
        "--num_inits",
        dest="num_inits",
        type=_pos_int,
        help=f"drop: query models per selection (default: {DROP_ONLY['num_inits']})",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    _train_flags(p)
    _select_flags(p, with_method=False)
    p.set_defaults(run=_with_progress(_run_experiment))


D2_METHODS = "random,topk-forgetting,d2,ccs,moderate,kcenter"
DROP_METHODS = "random,random+drop,el2n,el2n+drop,d2,d2+drop"
DROP_ONLY = {"cdbw": "off", "recall_smoothing": DEFAULT_RECALL_SMOOTHING, "num_inits": 1}


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

    drop = args.protocol == "drop"
    _protocol_flags(args, drop)
    fractions = _floats(args.fractions or ("0.3,0.5" if drop else "0.1,0.3,0.5"), "--fractions")
    try:
        seeds = [_nonneg_int(s) for s in _items(args.seeds, "--seeds")]
    except argparse.ArgumentTypeError as e:
        raise D2ScaleError(f"--seeds: {e}.") from None
    grid = dict(fractions=fractions, seeds=seeds, out=args.out, select_params=_select_params(args))
    if drop:
        grid["methods"] = ex.parse_drop_methods(args.methods or DROP_METHODS)
        grid["cdbw"] = [_on_off(v) for v in _items(args.cdbw, "--cdbw")]
        grid["num_inits"] = args.num_inits
        grid["smoothings"] = _items(args.recall_smoothing, "--recall-smoothing")
        if not set(grid["smoothings"]) <= {"none", "laplace"}:
            raise D2ScaleError("--recall-smoothing takes none, laplace or none,laplace.")
    else:
        grid["methods"] = ex.parse_methods(args.methods or D2_METHODS)
    say = args.say
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
    if text not in ("on", "off"):
        raise D2ScaleError(f"--cdbw takes off, on or off,on; got {text!r}.")
    return text == "on"


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
    p.add_argument("--counts", required=True, help="class sizes, comma list")
    p.add_argument(
        "--recalls", help="per-class validation recall in [0, 1], comma list (needed by drop)"
    )
    p.add_argument("--fraction", required=True, type=float, help="fraction kept, in (0, 1]")
    p.add_argument(
        "--quoter",
        "--quoter_name",
        dest="quoter",
        type=str.lower,
        choices=("drop", "uniform", "none"),
        default=DEFAULT_QUOTER,
        help="drop: density ∝ validation error; uniform: the same density in every class",
    )
    p.add_argument("--seed", type=_nonneg_int, default=0, help="fills the rounding leftovers")
    p.set_defaults(run=_run_quotas)


def _run_quotas(args) -> int:
    from d2scale.vision.quotas import quotas_report

    try:
        counts = [_nonneg_int(v) for v in _items(args.counts, "--counts")]
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
    _data_flags(p)
    p.add_argument("--strategy", type=_strategy, default="dp", help="dp (or 1) | al (or 0)")
    p.add_argument("--final-frac", "--final_frac", dest="final_frac", type=float, required=True)
    p.add_argument(
        "--init-frac",
        "--init_frac",
        dest="init_frac",
        type=float,
        help="al: the seeded initial labelled fraction (default final/(iterations+1))",
    )
    p.add_argument(
        "--scorer",
        "--scorer_name",
        dest="scorer",
        type=str.lower,
        default="random",
        help="random, el2n, grand, forgetting, dynunc, aum, entropy, d2, kcenter",
    )
    p.add_argument(
        "--quoter",
        "--quoter_name",
        dest="quoter",
        type=str.lower,
        choices=("none", "uniform", "drop", "auto"),
        default=DEFAULT_QUOTER,
        help="per-class quotas: drop (DRoP: density ∝ validation error), uniform, or none "
        "(the seed's Auto, its default): the scorer alone",
    )
    p.add_argument("--num-inits", "--num_inits", dest="num_inits", type=_pos_int, default=1)
    p.add_argument(
        "--iterations",
        type=_pos_int,
        default=1,
        help="selection iterations; fractions interpolate linearly to the final one",
    )
    p.add_argument("--cdbw-final", "--cdbw_final", dest="cdbw_final", action="store_true")
    p.add_argument("--cdbw-query", "--cdbw_query", dest="cdbw_query", action="store_true")
    p.add_argument(
        "--auto-config",
        "--auto_config",
        dest="auto_config",
        action="store_true",
        help="accepted for the seed; recipes are always filled per dataset/model",
    )
    p.add_argument("--query-epochs", type=_pos_int, help="query-model epochs (default: recipe)")
    p.add_argument(
        "--recall-smoothing",
        choices=("none", "laplace"),
        default=DEFAULT_RECALL_SMOOTHING,
        help="validation recall for quotas and CDB-W: laplace (hits + 1) / (n + 2), or none: "
        "as measured (published), which gives a class measured at recall 1.0 no samples",
    )
    p.add_argument(
        "--query-cache", metavar="DIR", help="reuse query models across runs (default: OUT/query)"
    )
    p.add_argument("--out", required=True, metavar="DIR")
    _train_flags(p, steps=False)
    _select_flags(p, with_method=False)
    p.set_defaults(run=_with_progress(_run_prune))


def _strategy(text: str) -> str:
    value = {"0": "al", "1": "dp"}.get(text, text.lower())
    if value not in ("dp", "al"):
        raise argparse.ArgumentTypeError("choose dp (or 1) or al (or 0)")
    return value


def _run_prune(args) -> int:
    from d2scale.vision.prune import PruneParams, run_prune

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
    ).validate()
    say = args.say
    data, recipe = _setup(args, "drop")
    metrics = run_prune(
        data,
        args.model,
        recipe,
        params,
        args.out,
        progress=say,
        bars=True,
        query_cache=args.query_cache,
    )
    _warn_unreadable(data, say)
    say(f"average test accuracy {_accuracies(metrics)} -> {args.out}/metrics.json")
    return 0
